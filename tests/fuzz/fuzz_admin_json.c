/*
 * libFuzzer target for the admin API's CRUD bodies: the bytes are a request body read the way
 * src/admin/admin.c reads one (json_loadb, duplicates rejected, must be an object). The body is
 * put into a small config document the way PUT /routes/NAME, /upstreams/NAME and /consumers/NAME
 * do, and also applied to a route as an RFC 7386 merge patch the way PATCH does. Each changed
 * document goes through the document layer (emit -> parse must give an equal value) and the
 * loader (which must not crash, and must answer with positioned errors or a valid config).
 *
 * admin.c's merge_patch() is static, so this target carries a copy of its logic (below); the
 * admin code itself is exercised by the integration tests, the document layer here.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "config/config.h"
#include "config/document.h"

static void check(int ok)
{
    if (!ok)
        __builtin_trap();
}

static const char BASE[] = "listen:\n"
                           "  - address: 127.0.0.1:8080\n"
                           "upstreams:\n"
                           "  users:\n"
                           "    targets: [ { address: 127.0.0.1:9001 } ]\n"
                           "consumers:\n"
                           "  app: { groups: [ partners ] }\n"
                           "routes:\n"
                           "  - name: users-api\n"
                           "    match: { path_prefix: /users, methods: [ GET ] }\n"
                           "    upstream: users\n"
                           "  - name: hello\n"
                           "    match: { path_prefix: / }\n"
                           "    respond: { status: 200, body: hi }\n";

/* Same logic as admin.c's static merge_patch (RFC 7386). */
static void merge_patch(json_t *target, json_t *patch)
{
    const char *k;
    json_t *v;
    json_object_foreach(patch, k, v)
    {
        if (json_is_null(v)) {
            json_object_del(target, k);
        } else if (json_is_object(v)) {
            json_t *t = json_object_get(target, k);
            if (!json_is_object(t)) {
                t = json_object();
                json_object_set_new(target, k, t);
            }
            merge_patch(t, v);
        } else {
            json_object_set(target, k, v);
        }
    }
}

/* The document must survive emit -> parse unchanged, and the loader must judge it sanely. */
static void roundtrip_and_load(json_t *doc)
{
    size_t len = 0;
    char *yaml = sl_config_document_emit(doc, &len);
    check(yaml != NULL && strlen(yaml) == len);
    sl_config_errors_t errs = {0};
    json_t *back = NULL;
    check(sl_config_document_parse("emitted.yaml", yaml, len, &back, &errs) == 0);
    check(json_equal(doc, back));
    json_decref(back);
    sl_config_errors_dispose(&errs);

    sl_config_errors_t lerrs = {0};
    sl_config_t *c = NULL;
    int rc = sl_config_load_buffer("emitted.yaml", yaml, len, &c, &lerrs);
    if (rc == 0) {
        check(c != NULL && lerrs.count == 0 && c->nlistens > 0);
        sl_config_unref(c);
    } else {
        check(lerrs.count > 0);
    }
    sl_config_errors_dispose(&lerrs);
    free(yaml);
}

static json_t *base_doc(void)
{
    sl_config_errors_t errs = {0};
    json_t *doc = NULL;
    check(sl_config_document_parse("base.yaml", BASE, sizeof(BASE) - 1, &doc, &errs) == 0);
    sl_config_errors_dispose(&errs);
    return doc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    /* The first byte picks the collection and the operation, the rest is the body. */
    uint8_t op = data[0];
    json_error_t jerr;
    json_t *body = json_loadb((const char *)data + 1, size - 1, JSON_REJECT_DUPLICATES, &jerr);
    if (body == NULL)
        return 0;
    if (!json_is_object(body)) {
        json_decref(body);
        return 0;
    }
    json_t *doc = base_doc();
    switch (op % 4) {
    case 0: { /* PUT /routes/users-api: replace the first route */
        json_object_set_new(body, "name", json_string("users-api"));
        json_array_set(json_object_get(doc, "routes"), 0, body);
        break;
    }
    case 1: { /* PATCH /routes/hello */
        json_object_del(body, "name");
        merge_patch(json_array_get(json_object_get(doc, "routes"), 1), body);
        break;
    }
    case 2: /* PUT /upstreams/fuzz */
        json_object_del(body, "name");
        json_object_set(json_object_get(doc, "upstreams"), "fuzz", body);
        break;
    default: /* PATCH /consumers/app */
        json_object_del(body, "name");
        merge_patch(json_object_get(json_object_get(doc, "consumers"), "app"), body);
        break;
    }
    roundtrip_and_load(doc);
    json_decref(doc);
    json_decref(body);
    return 0;
}
