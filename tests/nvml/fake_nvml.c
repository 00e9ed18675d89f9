/*
 * A fake NVML for tests: exports the entry points that src/coord/nvml.c
 * resolves and answers them from a script file, so that tests can play
 * devices and the processes on them without a GPU.
 *
 * The script is the file named by the environment variable FAKE_NVML_SCRIPT,
 * read again at every call (a test rewrites it while the coordinator runs).
 * One statement a line, fields key=value separated by spaces, unknown keys
 * ignored:
 *
 *     device 0 name=NVIDIA-H200 uuid=GPU-0000 total=1000 used=10
 *     process 0 pid=1234 used=500          (a compute process on device 0)
 *     graphics 0 pid=1234 used=20          (a graphics process on device 0)
 *     init fail                            (nvmlInit_v2 fails)
 *
 * The device count is one more than the highest device index named. A
 * missing script is a machine with no device. Not thread-safe (the
 * coordinator calls it from its loop thread only).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FAKE_MAX_DEVICES   16
#define FAKE_MAX_PROCESSES 64

typedef int nvmlReturn_t;
typedef void *nvmlDevice_t;

typedef struct nvmlMemory_t {
    unsigned long long total, free, used;
} nvmlMemory_t;

/* The _v2/_v3 layout. */
typedef struct nvmlProcessInfo_t {
    unsigned int pid;
    unsigned long long usedGpuMemory;
    unsigned int gpuInstanceId, computeInstanceId;
} nvmlProcessInfo_t;

enum {
    NVML_SUCCESS = 0,
    NVML_ERROR_UNINITIALIZED = 1,
    NVML_ERROR_INVALID_ARGUMENT = 2,
    NVML_ERROR_INSUFFICIENT_SIZE = 7,
    NVML_ERROR_UNKNOWN = 999
};

typedef struct fake_device {
    char name[64], uuid[64];
    unsigned long long total, used;
} fake_device;

typedef struct fake_process {
    unsigned int device, pid, graphics;
    unsigned long long used;
} fake_process;

typedef struct fake_script {
    int init_fails;
    unsigned int n_devices;
    fake_device devices[FAKE_MAX_DEVICES];
    size_t n_processes;
    fake_process processes[FAKE_MAX_PROCESSES];
} fake_script;

/* The library's exports (declared for -Wmissing-prototypes). */
nvmlReturn_t nvmlInit_v2(void);
nvmlReturn_t nvmlShutdown(void);
const char *nvmlErrorString(nvmlReturn_t r);
nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *count);
nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *dev);
nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t dev, char *name, unsigned int len);
nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t dev, char *uuid, unsigned int len);
nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t dev, nvmlMemory_t *mem);
nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v3(nvmlDevice_t dev, unsigned int *count,
                                                     nvmlProcessInfo_t *infos);
nvmlReturn_t nvmlDeviceGetGraphicsRunningProcesses_v3(nvmlDevice_t dev, unsigned int *count,
                                                      nvmlProcessInfo_t *infos);

static int initialized;

static unsigned long long field(const char *line, const char *key)
{
    const char *p = strstr(line, key);
    return p != NULL ? strtoull(p + strlen(key), NULL, 10) : 0;
}

static void field_str(const char *line, const char *key, char *out, size_t size)
{
    const char *p = strstr(line, key);
    out[0] = '\0';
    if (p == NULL)
        return;
    p += strlen(key);
    size_t n = strcspn(p, " \t\r\n");
    if (n >= size)
        n = size - 1;
    memcpy(out, p, n);
    out[n] = '\0';
}

static void parse_line(fake_script *s, const char *line)
{
    unsigned int index = 0;
    if (strncmp(line, "init fail", 9) == 0) {
        s->init_fails = 1;
    } else if (sscanf(line, "device %u", &index) == 1 && index < FAKE_MAX_DEVICES) {
        fake_device *d = &s->devices[index];
        field_str(line, "name=", d->name, sizeof(d->name));
        field_str(line, "uuid=", d->uuid, sizeof(d->uuid));
        d->total = field(line, "total=");
        d->used = field(line, "used=");
        if (index + 1 > s->n_devices)
            s->n_devices = index + 1;
    } else if ((sscanf(line, "process %u", &index) == 1 ||
                sscanf(line, "graphics %u", &index) == 1) &&
               s->n_processes < FAKE_MAX_PROCESSES) {
        fake_process *p = &s->processes[s->n_processes++];
        p->device = index;
        p->graphics = line[0] == 'g';
        p->pid = (unsigned int)field(line, "pid=");
        p->used = field(line, "used=");
    }
}

static void load(fake_script *s)
{
    memset(s, 0, sizeof(*s));
    const char *path = getenv("FAKE_NVML_SCRIPT");
    FILE *fp = path != NULL ? fopen(path, "r") : NULL;
    if (fp == NULL)
        return;
    char line[512];
    while (fgets(line, sizeof(line), fp) != NULL)
        parse_line(s, line);
    fclose(fp);
}

/* The device of handle @dev (handles are index + 1), or NULL. */
static fake_device *device_of(fake_script *s, nvmlDevice_t dev, unsigned int *index)
{
    uintptr_t h = (uintptr_t)dev;
    if (!initialized || h == 0 || h > s->n_devices)
        return NULL;
    *index = (unsigned int)(h - 1);
    return &s->devices[h - 1];
}

nvmlReturn_t nvmlInit_v2(void)
{
    fake_script s;
    load(&s);
    if (s.init_fails)
        return NVML_ERROR_UNKNOWN;
    initialized = 1;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlShutdown(void)
{
    initialized = 0;
    return NVML_SUCCESS;
}

const char *nvmlErrorString(nvmlReturn_t r)
{
    switch (r) {
    case NVML_SUCCESS:
        return "Success";
    case NVML_ERROR_UNINITIALIZED:
        return "Uninitialized";
    case NVML_ERROR_INVALID_ARGUMENT:
        return "Invalid Argument";
    case NVML_ERROR_INSUFFICIENT_SIZE:
        return "Insufficient Size";
    default:
        return "Unknown Error";
    }
}

nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *count)
{
    fake_script s;
    load(&s);
    if (!initialized)
        return NVML_ERROR_UNINITIALIZED;
    *count = s.n_devices;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *dev)
{
    fake_script s;
    load(&s);
    if (!initialized || index >= s.n_devices)
        return NVML_ERROR_INVALID_ARGUMENT;
    *dev = (nvmlDevice_t)(uintptr_t)(index + 1);
    return NVML_SUCCESS;
}

static nvmlReturn_t copy_out(const char *value, char *out, unsigned int len)
{
    if (strlen(value) + 1 > len)
        return NVML_ERROR_INSUFFICIENT_SIZE;
    memcpy(out, value, strlen(value) + 1);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t dev, char *name, unsigned int len)
{
    fake_script s;
    load(&s);
    unsigned int index;
    fake_device *d = device_of(&s, dev, &index);
    return d != NULL ? copy_out(d->name, name, len) : NVML_ERROR_INVALID_ARGUMENT;
}

nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t dev, char *uuid, unsigned int len)
{
    fake_script s;
    load(&s);
    unsigned int index;
    fake_device *d = device_of(&s, dev, &index);
    return d != NULL ? copy_out(d->uuid, uuid, len) : NVML_ERROR_INVALID_ARGUMENT;
}

nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t dev, nvmlMemory_t *mem)
{
    fake_script s;
    load(&s);
    unsigned int index;
    fake_device *d = device_of(&s, dev, &index);
    if (d == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    mem->total = d->total;
    mem->used = d->used;
    mem->free = d->total > d->used ? d->total - d->used : 0;
    return NVML_SUCCESS;
}

/* The processes of one kind on @dev, NVML style: INSUFFICIENT_SIZE with the count needed. */
static nvmlReturn_t processes(nvmlDevice_t dev, unsigned int graphics, unsigned int *count,
                              nvmlProcessInfo_t *infos)
{
    fake_script s;
    load(&s);
    unsigned int index;
    if (device_of(&s, dev, &index) == NULL || count == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    unsigned int n = 0;
    for (size_t i = 0; i < s.n_processes; i++) {
        const fake_process *p = &s.processes[i];
        if (p->device != index || p->graphics != graphics)
            continue;
        if (n < *count && infos != NULL)
            infos[n] = (nvmlProcessInfo_t){.pid = p->pid, .usedGpuMemory = p->used};
        n++;
    }
    nvmlReturn_t r = n > *count ? NVML_ERROR_INSUFFICIENT_SIZE : NVML_SUCCESS;
    *count = n;
    return r;
}

nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v3(nvmlDevice_t dev, unsigned int *count,
                                                     nvmlProcessInfo_t *infos)
{
    return processes(dev, 0, count, infos);
}

nvmlReturn_t nvmlDeviceGetGraphicsRunningProcesses_v3(nvmlDevice_t dev, unsigned int *count,
                                                      nvmlProcessInfo_t *infos)
{
    return processes(dev, 1, count, infos);
}
