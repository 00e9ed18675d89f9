/*
 * GPU leases (include/jimbot/coord.h "GPU leases"). Placeholder until the
 * lease engine lands: there is no device to lease, every acquire is
 * JB_EUNSUPPORTED.
 */
#include "coord/coord_internal.h"

#include <stdlib.h>

struct jb__gpu {
    jb_coord *co;
};

jb_status jb__gpu_new(jb_coord *co, jb__gpu **out, jb_error *err)
{
    jb__gpu *g = calloc(1, sizeof(*g));
    if (g == NULL)
        return jb_error_set(err, JB_ENOMEM, "out of memory");
    g->co = co;
    *out = g;
    return JB_OK;
}

jb_status jb__gpu_restore(jb__gpu *g, const jb__state_image *img, jb_error *err)
{
    (void)g, (void)img, (void)err;
    return JB_OK;
}

jb_status jb__gpu_save(jb__gpu *g, jb__state_image *img)
{
    (void)g, (void)img;
    return JB_OK;
}

void jb__gpu_settings_changed(jb__gpu *g)
{
    (void)g;
}

void jb__gpu_close(jb__gpu *g)
{
    (void)g;
}

void jb__gpu_free(jb__gpu *g)
{
    free(g);
}

jb_status jb_coord_gpu_acquire(jb_coord *co, const jb_gpu_request *req, jb_gpu_cb cb,
                               void *userdata, jb_gpu_lease **out, jb_error *err)
{
    (void)co, (void)req, (void)cb, (void)userdata, (void)out;
    return jb_error_set(err, JB_EUNSUPPORTED, "GPU leases are not built yet");
}

void jb_coord_gpu_cancel(jb_gpu_lease *lease)
{
    (void)lease;
}

void jb_coord_gpu_detach(jb_gpu_lease *lease)
{
    (void)lease;
}

jb_status jb_coord_gpu_release(jb_coord *co, const char *lease_id, jb_gpu_release_info *info,
                               jb_error *err)
{
    (void)co, (void)lease_id, (void)info;
    return jb_error_set(err, JB_ENOENT, "no such lease");
}

const char *jb_coord_gpu_source(const jb_coord *co)
{
    (void)co;
    return "config";
}

void jb_coord_foreach_gpu(jb_coord *co, void (*fn)(const jb_gpu_device_info *d, void *ud),
                          void *ud)
{
    (void)co, (void)fn, (void)ud;
}

void jb_coord_foreach_gpu_waiter(jb_coord *co, void (*fn)(const jb_gpu_waiter_info *w, void *ud),
                                 void *ud)
{
    (void)co, (void)fn, (void)ud;
}
