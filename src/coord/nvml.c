/*
 * The NVML adapter: the one file that talks to NVIDIA's management library.
 *
 * NVML is loaded at run time with dlopen(RTLD_NOW | RTLD_LOCAL), so neither
 * the build nor a machine without a GPU needs it; only the few entry points
 * the coordinator uses are resolved. The types below are the facts of NVML's
 * C ABI that those calls need (no NVML header is used): nvmlReturn_t is an
 * int, a device handle an opaque pointer, and the process lists come in two
 * layouts: {pid, usedGpuMemory} for the unversioned (v1) calls and
 * {pid, usedGpuMemory, gpuInstanceId, computeInstanceId} for _v2 and _v3.
 * The newest process call the library exports is used.
 *
 * What it reports: the device count, each device's name, UUID and memory,
 * and the device memory that a set of processes hold (compute and graphics
 * processes together), which the lease engine (gpu.c) uses to confirm a
 * release. Every call is synchronous and quick (NVML answers from the
 * driver); it runs on the loop thread.
 *
 * Must not depend on: anything but libc and libdl.
 */
#include "coord/coord_internal.h"

#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- NVML's ABI, as far as it is used here ------------------------------- */

typedef int nvml_return;
typedef void *nvml_device;

#define NVML_OK                0
#define NVML_INSUFFICIENT_SIZE 7
#define NVML_NOT_AVAILABLE     (~0ULL) /* usedGpuMemory when the driver cannot tell */

typedef struct nvml_memory {
    unsigned long long total, free, used;
} nvml_memory;

typedef struct nvml_process_v1 {
    unsigned int pid;
    unsigned long long used;
} nvml_process_v1;

typedef struct nvml_process_v2 {
    unsigned int pid;
    unsigned long long used;
    unsigned int gpu_instance, compute_instance;
} nvml_process_v2;

typedef nvml_return (*nvml_processes_fn)(nvml_device dev, unsigned int *count, void *infos);

struct jb__nvml {
    void *lib;
    uint32_t count;
    nvml_return (*shutdown)(void);
    nvml_return (*handle_by_index)(unsigned int index, nvml_device *dev);
    nvml_return (*get_name)(nvml_device dev, char *name, unsigned int len);
    nvml_return (*get_uuid)(nvml_device dev, char *uuid, unsigned int len);
    nvml_return (*get_memory)(nvml_device dev, nvml_memory *mem);
    const char *(*error_string)(nvml_return r);
    nvml_processes_fn compute, graphics;
    size_t process_size; /* sizeof one entry of the process calls found */
};

static const char *nvml_error(const jb__nvml *n, nvml_return r)
{
    const char *s = n->error_string != NULL ? n->error_string(r) : NULL;
    return s != NULL ? s : "unknown NVML error";
}

/* Resolves @name into *@fn; 0 when the library lacks it. */
static int resolve(void *lib, const char *name, void *fn)
{
    void *sym = dlsym(lib, name);
    memcpy(fn, &sym, sizeof(sym));
    return sym != NULL;
}

/* The newest of the process-list calls named @base (_v3, _v2, unversioned). */
static nvml_processes_fn resolve_processes(jb__nvml *n, const char *base, size_t *entry)
{
    static const char *const suffixes[] = {"_v3", "_v2", ""};
    for (size_t i = 0; i < 3; i++) {
        char name[96];
        snprintf(name, sizeof(name), "%s%s", base, suffixes[i]);
        nvml_processes_fn fn = NULL;
        if (resolve(n->lib, name, &fn)) {
            *entry = i < 2 ? sizeof(nvml_process_v2) : sizeof(nvml_process_v1);
            return fn;
        }
    }
    return NULL;
}

static jb_status resolve_all(jb__nvml *n, const char *library, nvml_return (**init)(void),
                             nvml_return (**get_count)(unsigned int *), jb_error *err)
{
    resolve(n->lib, "nvmlErrorString", &n->error_string);
    int ok = resolve(n->lib, "nvmlInit_v2", init) &&
             resolve(n->lib, "nvmlShutdown", &n->shutdown) &&
             resolve(n->lib, "nvmlDeviceGetCount_v2", get_count) &&
             resolve(n->lib, "nvmlDeviceGetHandleByIndex_v2", &n->handle_by_index) &&
             resolve(n->lib, "nvmlDeviceGetName", &n->get_name) &&
             resolve(n->lib, "nvmlDeviceGetUUID", &n->get_uuid) &&
             resolve(n->lib, "nvmlDeviceGetMemoryInfo", &n->get_memory);
    if (!ok)
        return jb_error_set(err, JB_ENOENT, "%s lacks an NVML entry point", library);
    size_t graphics_size = 0;
    n->compute = resolve_processes(n, "nvmlDeviceGetComputeRunningProcesses", &n->process_size);
    n->graphics = resolve_processes(n, "nvmlDeviceGetGraphicsRunningProcesses", &graphics_size);
    if (n->compute == NULL || n->graphics == NULL || graphics_size != n->process_size)
        return jb_error_set(err, JB_ENOENT, "%s lacks the NVML process calls", library);
    return JB_OK;
}

jb_status jb__nvml_open(const char *library, jb__nvml **out, jb_error *err)
{
    jb__nvml *n = calloc(1, sizeof(*n));
    if (n == NULL)
        return jb_error_set(err, JB_ENOMEM, "out of memory");
    n->lib = dlopen(library, RTLD_NOW | RTLD_LOCAL);
    if (n->lib == NULL) {
        const char *why = dlerror();
        jb_error_set(err, JB_ENOENT, "cannot load %s: %s", library, why != NULL ? why : "?");
        free(n);
        return JB_ENOENT;
    }
    nvml_return (*init)(void) = NULL;
    nvml_return (*get_count)(unsigned int *) = NULL;
    jb_status st = resolve_all(n, library, &init, &get_count, err);
    nvml_return r = NVML_OK;
    if (st == JB_OK && (r = init()) != NVML_OK)
        st = jb_error_set(err, JB_EIO, "nvmlInit: %s", nvml_error(n, r));
    unsigned int count = 0;
    if (st == JB_OK && (r = get_count(&count)) != NVML_OK) {
        st = jb_error_set(err, JB_EIO, "nvmlDeviceGetCount: %s", nvml_error(n, r));
        n->shutdown();
    }
    if (st != JB_OK) {
        dlclose(n->lib);
        free(n);
        return st;
    }
    n->count = count;
    *out = n;
    return JB_OK;
}

uint32_t jb__nvml_count(const jb__nvml *n)
{
    return n != NULL ? n->count : 0;
}

static jb_status device_handle(jb__nvml *n, uint32_t index, nvml_device *dev, jb_error *err)
{
    if (n == NULL)
        return jb_error_set(err, JB_EUNSUPPORTED, "no NVML");
    if (index >= n->count)
        return jb_error_set(err, JB_ENOENT, "no NVML device %u", index);
    nvml_return r = n->handle_by_index(index, dev);
    if (r != NVML_OK)
        return jb_error_set(err, JB_EIO, "NVML device %u: %s", index, nvml_error(n, r));
    return JB_OK;
}

jb_status jb__nvml_device_info(jb__nvml *n, uint32_t index, jb__nvml_device *out, jb_error *err)
{
    nvml_device dev;
    jb_status st = device_handle(n, index, &dev, err);
    if (st != JB_OK)
        return st;
    memset(out, 0, sizeof(*out));
    nvml_return r = n->get_name(dev, out->name, sizeof(out->name));
    if (r == NVML_OK)
        r = n->get_uuid(dev, out->uuid, sizeof(out->uuid));
    nvml_memory mem = {0};
    if (r == NVML_OK)
        r = n->get_memory(dev, &mem);
    if (r != NVML_OK)
        return jb_error_set(err, JB_EIO, "NVML device %u: %s", index, nvml_error(n, r));
    out->name[sizeof(out->name) - 1] = '\0';
    out->uuid[sizeof(out->uuid) - 1] = '\0';
    out->memory_total = mem.total;
    out->memory_used = mem.used;
    return JB_OK;
}

/* The set of processes asked about, and which of them were counted already. */
typedef struct pid_set {
    const uint32_t *pids;
    unsigned char *counted; /* a process listed as compute and graphics counts once */
    size_t n;
} pid_set;

static void count_process(pid_set *set, unsigned int pid, unsigned long long used, uint64_t *bytes)
{
    for (size_t i = 0; i < set->n; i++) {
        if (set->pids[i] == pid && !set->counted[i]) {
            set->counted[i] = 1;
            if (used != NVML_NOT_AVAILABLE)
                *bytes += used;
        }
    }
}

/* Adds to *@bytes what the processes of @set hold in the list @fn gives. */
static jb_status sum_processes(jb__nvml *n, nvml_processes_fn fn, nvml_device dev, pid_set *set,
                               uint64_t *bytes, jb_error *err)
{
    unsigned int cap = 64;
    for (int attempt = 0; attempt < 4; attempt++) {
        unsigned char *buf = calloc(cap, n->process_size);
        if (buf == NULL)
            return jb_error_set(err, JB_ENOMEM, "out of memory");
        unsigned int count = cap;
        nvml_return r = fn(dev, &count, buf);
        if (r == NVML_INSUFFICIENT_SIZE) {
            free(buf);
            cap = count > cap ? count + 16 : cap * 2;
            continue;
        }
        if (r != NVML_OK) {
            free(buf);
            return jb_error_set(err, JB_EIO, "NVML running processes: %s", nvml_error(n, r));
        }
        for (unsigned int i = 0; i < count && i < cap; i++) {
            nvml_process_v1 p; /* pid and used lead both layouts, at the same offsets */
            memcpy(&p, buf + (size_t)i * n->process_size, sizeof(p));
            count_process(set, p.pid, p.used, bytes);
        }
        free(buf);
        return JB_OK;
    }
    return jb_error_set(err, JB_EIO, "NVML running processes: the list keeps growing");
}

jb_status jb__nvml_memory_of(jb__nvml *n, uint32_t index, const uint32_t *pids, size_t n_pids,
                             uint64_t *bytes, jb_error *err)
{
    nvml_device dev;
    jb_status st = device_handle(n, index, &dev, err);
    if (st != JB_OK)
        return st;
    pid_set set = {.pids = pids, .counted = calloc(n_pids + 1, 1), .n = n_pids};
    if (set.counted == NULL)
        return jb_error_set(err, JB_ENOMEM, "out of memory");
    uint64_t sum = 0;
    st = sum_processes(n, n->compute, dev, &set, &sum, err);
    if (st == JB_OK)
        st = sum_processes(n, n->graphics, dev, &set, &sum, err);
    free(set.counted);
    if (st == JB_OK)
        *bytes = sum;
    return st;
}

void jb__nvml_close(jb__nvml *n)
{
    if (n == NULL)
        return;
    n->shutdown();
    dlclose(n->lib);
    free(n);
}
