/*
 * The coordinator's state file. Placeholder until it lands: nothing is
 * loaded or written; a persist completes on the next loop turn.
 */
#include "coord/coord_internal.h"

#include <stdlib.h>

struct jb__state {
    int unused;
};

typedef struct deferred {
    uv_timer_t timer;
    jb__persist_cb cb;
    void *ud;
} deferred;

void jb__state_image_release(jb__state_image *img)
{
    for (size_t i = 0; i < img->n_leases; i++) {
        free(img->leases[i].lease_id);
        free(img->leases[i].component);
        free(img->leases[i].reason);
    }
    free(img->leases);
    for (size_t i = 0; i < img->n_spends; i++)
        free(img->spends[i].component);
    free(img->spends);
    *img = (jb__state_image){0};
}

jb_status jb__state_open(jb_coord *co, jb__state_image *img, jb_error *err)
{
    (void)err;
    *img = (jb__state_image){0};
    co->state = NULL;
    return JB_OK;
}

static void on_closed(uv_handle_t *h)
{
    free(h->data);
}

static void on_timer(uv_timer_t *t)
{
    deferred *d = (deferred *)t;
    d->cb(JB_OK, NULL, d->ud);
    t->data = d;
    uv_close((uv_handle_t *)t, on_closed);
}

void jb__coord_persist(jb_coord *co, jb__persist_cb cb, void *userdata)
{
    deferred *d = calloc(1, sizeof(*d));
    if (d == NULL)
        JB_BUG("out of memory");
    d->cb = cb;
    d->ud = userdata;
    uv_timer_init(co->loop, &d->timer);
    uv_timer_start(&d->timer, on_timer, 0, 0);
}

void jb__state_close(jb__state *st, void (*cb)(void *ud), void *ud)
{
    (void)st;
    if (cb != NULL)
        cb(ud);
}
