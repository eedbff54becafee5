/*
 * libFuzzer target for the config as a document (src/config/document.h), the layer the admin
 * API's GET/PUT /config and CRUD endpoints stand on: arbitrary bytes as YAML or JSON are parsed
 * to a JSON value; when that succeeds and gives an object, emitting it as YAML and parsing the
 * emitted text again must succeed and give an equal value, and emitting that must give the same
 * text (the emitter is a function of the value).
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

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    sl_config_errors_t errs = {0};
    json_t *doc = NULL;
    int rc = sl_config_document_parse("fuzz.yaml", (const char *)data, size, &doc, &errs);
    if (rc != 0) {
        check(doc == NULL && errs.count > 0);
        sl_config_errors_dispose(&errs);
        return 0;
    }
    check(doc != NULL);
    sl_config_errors_dispose(&errs);
    if (json_is_object(doc)) {
        size_t len1 = 0;
        char *yaml1 = sl_config_document_emit(doc, &len1);
        check(yaml1 != NULL && strlen(yaml1) == len1);
        sl_config_errors_t errs2 = {0};
        json_t *back = NULL;
        int rc2 = sl_config_document_parse("emitted.yaml", yaml1, len1, &back, &errs2);
        check(rc2 == 0);
        check(json_equal(doc, back));
        size_t len2 = 0;
        char *yaml2 = sl_config_document_emit(back, &len2);
        check(len1 == len2 && memcmp(yaml1, yaml2, len1) == 0);
        free(yaml2);
        json_decref(back);
        sl_config_errors_dispose(&errs2);
        free(yaml1);
    }
    json_decref(doc);
    return 0;
}
