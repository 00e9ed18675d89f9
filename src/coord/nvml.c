/*
 * The NVML adapter (dlopen'd at run time). Placeholder until it lands: NVML
 * is never found.
 */
#include "coord/coord_internal.h"

jb_status jb__nvml_open(const char *library, jb__nvml **out, jb_error *err)
{
    (void)out;
    return jb_error_set(err, JB_ENOENT, "cannot load %s: not built yet", library);
}

uint32_t jb__nvml_count(const jb__nvml *n)
{
    (void)n;
    return 0;
}

jb_status jb__nvml_device_info(jb__nvml *n, uint32_t index, jb__nvml_device *out, jb_error *err)
{
    (void)n, (void)index, (void)out;
    return jb_error_set(err, JB_EUNSUPPORTED, "no NVML");
}

jb_status jb__nvml_memory_of(jb__nvml *n, uint32_t index, const uint32_t *pids, size_t n_pids,
                             uint64_t *bytes, jb_error *err)
{
    (void)n, (void)index, (void)pids, (void)n_pids, (void)bytes;
    return jb_error_set(err, JB_EUNSUPPORTED, "no NVML");
}

void jb__nvml_close(jb__nvml *n)
{
    (void)n;
}
