/*
 * A listener's `tls` (docs/tls.md): the key table, then, once the whole listen list is read,
 * loading every certificate and key and building the listener's TLS context, so `sluice check`
 * and a reload report a missing, unreadable, malformed, expired or mismatched file at the line
 * and column of the `cert:` or `key:` that names it, and a generation that loads is one that
 * serves. The context belongs to the generation (released by its arena).
 */
#include <limits.h>
#include <stdio.h>
#include <string.h>

#include "common/bug.h"
#include "config/internal.h"
#include "tls/tls.h"

int sl__config_read_file_path(sl__config_ctx_t *ctx, const char *name, const sl__config_node_t *v, sl_str_t *out,
                              sl_config_pos_t *pos)
{
    v = sl__config_node_deref(v);
    if (sl__config_read_str(ctx, name, v, out) != 0)
        return -1;
    *pos = v->pos;
    if (out->len == 0) {
        sl__config_error(ctx, v, "%s: expected a file path", name);
        return -1;
    }
    return 0;
}

static int read_path(sl__config_ctx_t *ctx, const sl__config_key_t *k, const sl__config_node_t *v, sl_str_t *out,
                     sl_config_pos_t *pos)
{
    return sl__config_read_file_path(ctx, k->name, v, out, pos);
}

static int parse_cert_path(sl__config_ctx_t *ctx, const sl__config_key_t *k, const sl__config_node_t *v, void *field)
{
    sl_tls_cert_conf_t *c = SL_CONTAINER_OF(field, sl_tls_cert_conf_t, cert);
    return read_path(ctx, k, v, &c->cert, &c->cert_pos);
}

static int parse_key_path(sl__config_ctx_t *ctx, const sl__config_key_t *k, const sl__config_node_t *v, void *field)
{
    sl_tls_cert_conf_t *c = SL_CONTAINER_OF(field, sl_tls_cert_conf_t, key);
    return read_path(ctx, k, v, &c->key, &c->key_pos);
}

static int parse_ocsp_path(sl__config_ctx_t *ctx, const sl__config_key_t *k, const sl__config_node_t *v, void *field)
{
    sl_tls_cert_conf_t *c = SL_CONTAINER_OF(field, sl_tls_cert_conf_t, ocsp);
    return read_path(ctx, k, v, &c->ocsp, &c->ocsp_pos);
}

static const sl__config_key_t cert_keys[] = {
    {.name = "cert",
     .type = SL__CT_CUSTOM,
     .offset = offsetof(sl_tls_cert_conf_t, cert),
     .required = true,
     .parse = parse_cert_path},
    {.name = "key",
     .type = SL__CT_CUSTOM,
     .offset = offsetof(sl_tls_cert_conf_t, key),
     .required = true,
     .parse = parse_key_path},
    {.name = "ocsp", .type = SL__CT_CUSTOM, .offset = offsetof(sl_tls_cert_conf_t, ocsp), .parse = parse_ocsp_path},
};

static const sl__config_section_t cert_section = {
    .what = "tls certificate",
    .keys = cert_keys,
    .nkeys = sizeof(cert_keys) / sizeof(cert_keys[0]),
    .pos_offset = offsetof(sl_tls_cert_conf_t, pos),
};

static int parse_certificates(sl__config_ctx_t *ctx, const sl__config_key_t *k, const sl__config_node_t *v, void *field)
{
    sl_listen_tls_conf_t *t = SL_CONTAINER_OF(field, sl_listen_tls_conf_t, certificates);
    void *items;
    int rc = sl__config_walk_seq(ctx, &cert_section, k->name, v, sizeof(sl_tls_cert_conf_t), &items, &t->ncertificates);
    t->certificates = items;
    if (rc == 0 && t->ncertificates == 0) {
        sl__config_error(ctx, sl__config_node_deref(v), "certificates: needs at least one { cert, key }");
        return -1;
    }
    return rc;
}

static int parse_ciphers(sl__config_ctx_t *ctx, const sl__config_key_t *k, const sl__config_node_t *v, void *field)
{
    sl_listen_tls_conf_t *t = SL_CONTAINER_OF(field, sl_listen_tls_conf_t, ciphers);
    v = sl__config_node_deref(v);
    if (sl__config_read_str(ctx, k->name, v, &t->ciphers) != 0)
        return -1;
    t->ciphers_pos = v->pos;
    return 0;
}

static int parse_client_ca(sl__config_ctx_t *ctx, const sl__config_key_t *k, const sl__config_node_t *v, void *field)
{
    sl_listen_tls_conf_t *t = SL_CONTAINER_OF(field, sl_listen_tls_conf_t, client_ca);
    return read_path(ctx, k, v, &t->client_ca, &t->client_ca_pos);
}

static const sl__config_enum_t client_auth_modes[] = {
    {"required", 1, false},
    {"optional", 2, false},
    {NULL, 0, false},
};

static const sl__config_enum_t tls_versions[] = {
    {"1.2", SL_TLS_V1_2, false},
    {"1.3", SL_TLS_V1_3, false},
    {NULL, 0, false},
};

static const sl__config_key_t tls_keys[] = {
    {.name = "certificates",
     .type = SL__CT_CUSTOM,
     .offset = offsetof(sl_listen_tls_conf_t, certificates),
     .required = true,
     .parse = parse_certificates},
    {.name = "min_version",
     .type = SL__CT_ENUM,
     .offset = offsetof(sl_listen_tls_conf_t, min_version),
     .dflt = "1.2",
     .enums = tls_versions},
    {.name = "ciphers",
     .type = SL__CT_CUSTOM,
     .offset = offsetof(sl_listen_tls_conf_t, ciphers),
     .parse = parse_ciphers},
    {.name = "client_ca",
     .type = SL__CT_CUSTOM,
     .offset = offsetof(sl_listen_tls_conf_t, client_ca),
     .parse = parse_client_ca},
    {.name = "client_auth",
     .type = SL__CT_ENUM,
     .offset = offsetof(sl_listen_tls_conf_t, client_auth),
     .dflt = "required",
     .enums = client_auth_modes},
};

static const sl__config_section_t tls_section = {
    .what = "listener tls",
    .keys = tls_keys,
    .nkeys = sizeof(tls_keys) / sizeof(tls_keys[0]),
    .pos_offset = offsetof(sl_listen_tls_conf_t, pos),
};

int sl__config_parse_listen_tls(sl__config_ctx_t *ctx, const sl__config_key_t *k, const sl__config_node_t *v,
                                void *field)
{
    sl_listen_tls_conf_t *t = field;
    memset(t, 0, sizeof(*t));
    sl__config_defaults(ctx, &tls_section, t);
    if (sl__config_walk(ctx, &tls_section, k->name, v, t) != 0) {
        t->ncertificates = 0; /* nothing to load: the errors are already reported */
        t->enabled = true;
        return -1;
    }
    t->enabled = true;
    return 0;
}

/* ---- loading, after the whole listen list is read ----------------------------------------- */

void sl__config_resolve_path(const sl__config_ctx_t *ctx, sl_str_t path, char *out, size_t size)
{
    if (path.ptr[0] == '/' || ctx->file.len == 0 || ctx->file.ptr[0] == '<') {
        snprintf(out, size, "%s", path.ptr);
        return;
    }
    const char *slash = NULL;
    for (size_t i = 0; i < ctx->file.len; i++)
        if (ctx->file.ptr[i] == '/')
            slash = ctx->file.ptr + i;
    if (slash == NULL)
        snprintf(out, size, "%s", path.ptr);
    else
        snprintf(out, size, "%.*s/%s", (int)(slash - ctx->file.ptr), ctx->file.ptr, path.ptr);
}

static void release_ctx(void *data)
{
    sl_tls_ctx_unref(data);
}

static void build_listener(sl__config_ctx_t *ctx, sl_listen_conf_t *l, unsigned index)
{
    sl_listen_tls_conf_t *t = &l->tls;
    sl_tls_cert_t **certs = sl_arena_alloc(&ctx->scratch, t->ncertificates * sizeof(*certs));
    size_t n = 0;
    bool ok = true;
    for (size_t i = 0; i < t->ncertificates; i++) {
        const sl_tls_cert_conf_t *c = &t->certificates[i];
        char cert_path[PATH_MAX], key_path[PATH_MAX], msg[512];
        sl__config_resolve_path(ctx, c->cert, cert_path, sizeof(cert_path));
        sl__config_resolve_path(ctx, c->key, key_path, sizeof(key_path));
        enum sl_tls_cert_part part = SL_TLS_PART_CERT;
        sl_tls_cert_t *cert;
        if (sl_tls_cert_load(cert_path, key_path, &cert, &part, msg, sizeof(msg)) != 0) {
            sl__config_error_at(ctx, part == SL_TLS_PART_KEY ? c->key_pos : c->cert_pos, "tls: %s", msg);
            ok = false;
            continue;
        }
        if (c->ocsp.len) {
            char ocsp_path[PATH_MAX];
            sl__config_resolve_path(ctx, c->ocsp, ocsp_path, sizeof(ocsp_path));
            if (sl_tls_cert_set_ocsp(cert, ocsp_path, msg, sizeof(msg)) != 0) {
                sl__config_error_at(ctx, c->ocsp_pos, "tls: %s", msg);
                sl_tls_cert_free(cert);
                ok = false;
                continue;
            }
        }
        certs[n++] = cert;
    }
    if (!ok) {
        for (size_t i = 0; i < n; i++)
            sl_tls_cert_free(certs[i]);
        return;
    }
    char msg[512], ca_path[PATH_MAX];
    if (t->client_ca.len)
        sl__config_resolve_path(ctx, t->client_ca, ca_path, sizeof(ca_path));
    sl_tls_options_t o = {
        .min_version = (enum sl_tls_version)t->min_version,
        .ciphers = t->ciphers.len ? t->ciphers.ptr : NULL,
        .client_ca = t->client_ca.len ? ca_path : NULL,
        .client_cert_optional = t->client_auth == 2,
        .http2 = l->http2,
        .listener = index,
        .listener_name = l->address.ptr,
    };
    if (sl_tls_ctx_create(certs, n, &o, &t->ctx, msg, sizeof(msg)) != 0) {
        sl_config_pos_t at = t->pos;
        if (strncmp(msg, "client_ca", 9) == 0)
            at = t->client_ca_pos;
        else if (t->ciphers.len)
            at = t->ciphers_pos;
        sl__config_error_at(ctx, at, "tls: %s", msg);
        return;
    }
    sl_arena_on_dispose(&ctx->cfg->arena, release_ctx, t->ctx);
}

void sl__config_build_tls(sl__config_ctx_t *ctx)
{
    sl_config_t *cfg = ctx->cfg;
    for (size_t i = 0; i < cfg->nlistens; i++)
        if (cfg->listens[i].tls.enabled && cfg->listens[i].tls.ncertificates > 0 && cfg->listens[i].address.ptr)
            build_listener(ctx, &cfg->listens[i], (unsigned)i);
}
