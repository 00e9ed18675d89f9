/*
 * The shared Redis's namespaces (include/jimbot/coord.h "Shared Redis"):
 * PLACEHOLDER until the engine lands (issue 11): nothing is provisioned, so
 * the coordinator says Redis is not configured, whatever the configuration.
 *
 * Loop thread only.
 */
#include "coord/coord_internal.h"

#include <string.h>

jb_status jb_coord_redis_access(jb_coord *co, const char *component, jb_redis_access *out,
                                jb_error *err)
{
    (void)co;
    (void)component;
    (void)out;
    return jb_error_set(err, JB_EUNSUPPORTED, "no shared Redis in this build yet");
}

jb_status jb_coord_redis_rotate(jb_coord *co, const char *component, jb_redis_access_cb cb,
                                void *userdata, jb_error *err)
{
    (void)cb;
    (void)userdata;
    jb_redis_access unused;
    return jb_coord_redis_access(co, component, &unused, err);
}

void jb_coord_redis_info(jb_coord *co, jb_redis_info *out)
{
    (void)co;
    memset(out, 0, sizeof(*out));
    out->url = "";
    out->error = "";
}

void jb_coord_foreach_redis_component(jb_coord *co,
                                      void (*fn)(const jb_redis_component_info *c, void *ud),
                                      void *ud)
{
    (void)co;
    (void)fn;
    (void)ud;
}
