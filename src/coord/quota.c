/*
 * The API budget (include/jimbot/coord.h "The API budget"). Placeholder
 * until the budget engine lands: every acquire is JB_EUNSUPPORTED.
 */
#include "coord/coord_internal.h"

#include <stdlib.h>

struct jb__quota {
    jb_coord *co;
};

jb_status jb__quota_new(jb_coord *co, jb__quota **out, jb_error *err)
{
    jb__quota *q = calloc(1, sizeof(*q));
    if (q == NULL)
        return jb_error_set(err, JB_ENOMEM, "out of memory");
    q->co = co;
    *out = q;
    return JB_OK;
}

jb_status jb__quota_restore(jb__quota *q, const jb__state_image *img, jb_error *err)
{
    (void)q, (void)img, (void)err;
    return JB_OK;
}

jb_status jb__quota_save(jb__quota *q, jb__state_image *img)
{
    (void)q, (void)img;
    return JB_OK;
}

void jb__quota_settings_changed(jb__quota *q)
{
    (void)q;
}

void jb__quota_close(jb__quota *q)
{
    (void)q;
}

void jb__quota_free(jb__quota *q)
{
    free(q);
}

jb_status jb_coord_quota_acquire(jb_coord *co, const jb_quota_request *req, jb_quota_cb cb,
                                 void *userdata, jb_quota_wait **out, jb_error *err)
{
    (void)co, (void)req, (void)cb, (void)userdata, (void)out;
    return jb_error_set(err, JB_EUNSUPPORTED, "the API budget is not built yet");
}

void jb_coord_quota_cancel(jb_quota_wait *w)
{
    (void)w;
}

void jb_coord_quota_info(jb_coord *co, jb_quota_info *out)
{
    *out = (jb_quota_info){.limit = co->set.hourly_limit,
                           .remaining = co->set.hourly_limit,
                           .window_ms = (uint32_t)co->set.window_ms};
}

void jb_coord_foreach_quota_component(jb_coord *co,
                                      void (*fn)(const jb_quota_component_info *c, void *ud),
                                      void *ud)
{
    (void)co, (void)fn, (void)ud;
}
