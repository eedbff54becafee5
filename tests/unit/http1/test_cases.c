/*
 * Runs the strictness and smuggling corpus (the .case files of tests/integration/cases/h1, format
 * in tests/integration/cases/README.md) through the request parser and the chunked decoder, and
 * checks each file's verdict (status and cause) against its expect_status / expect_cause. The
 * integration suite sends the same files to the real gateway.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "http1/parser.h"

#define CASES_DIR SL_TEST_DATA "/../../integration/cases/h1"
#define MIN_CASES 40
#define MAX_RAW   (1u << 20)

static const sl_h1_limits_t limits = {.max_head_bytes = 16384, .max_uri_bytes = 8192, .max_headers = 100};

struct tcase {
    char name[256];
    char description[512];
    int expect_status;
    char expect_cause[64];
    char must_not[256];
    char *raw;
    size_t len;
};

static int hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c |= 0x20;
    return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* Appends the unescaped bytes of s[0..n) to out; real newlines and CRs are skipped. */
static bool unescape(const char *s, size_t n, char *out, size_t *len, const char *file)
{
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (c == '\n' || c == '\r')
            continue;
        if (*len >= MAX_RAW) {
            print_error("%s: raw request too big\n", file);
            return false;
        }
        if (c != '\\') {
            out[(*len)++] = c;
            continue;
        }
        if (++i == n) {
            print_error("%s: trailing backslash\n", file);
            return false;
        }
        switch (s[i]) {
        case 'r':
            out[(*len)++] = '\r';
            break;
        case 'n':
            out[(*len)++] = '\n';
            break;
        case 't':
            out[(*len)++] = '\t';
            break;
        case '0':
            out[(*len)++] = '\0';
            break;
        case '\\':
            out[(*len)++] = '\\';
            break;
        case 'x':
            if (i + 2 >= n || hexval(s[i + 1]) < 0 || hexval(s[i + 2]) < 0) {
                print_error("%s: bad \\x escape\n", file);
                return false;
            }
            out[(*len)++] = (char)(hexval(s[i + 1]) << 4 | hexval(s[i + 2]));
            i += 2;
            break;
        default:
            print_error("%s: unknown escape \\%c\n", file, s[i]);
            return false;
        }
    }
    return true;
}

/* The raw part: escapes, ignored newlines, {repeat:X:N}. */
static bool decode_raw(const char *s, size_t n, char *out, size_t *len, const char *file)
{
    static const char tag[] = "{repeat:";
    size_t i = 0;
    *len = 0;
    while (i < n) {
        const char *open = strstr(s + i, tag);
        size_t stop = open && (size_t)(open - s) < n ? (size_t)(open - s) : n;
        if (!unescape(s + i, stop - i, out, len, file))
            return false;
        if (stop == n)
            break;
        const char *body = open + sizeof(tag) - 1;
        const char *close = memchr(body, '}', n - (size_t)(body - s));
        const char *colon = NULL;
        for (const char *p = body; close && p < close; p++)
            if (*p == ':')
                colon = p;
        if (close == NULL || colon == NULL || colon + 1 == close) {
            print_error("%s: bad {repeat:X:N}\n", file);
            return false;
        }
        char *end;
        unsigned long count = strtoul(colon + 1, &end, 10);
        if (end != close || count > MAX_RAW) {
            print_error("%s: bad repeat count\n", file);
            return false;
        }
        for (unsigned long k = 0; k < count; k++)
            if (!unescape(body, (size_t)(colon - body), out, len, file))
                return false;
        i = (size_t)(close - s) + 1;
    }
    return true;
}

static void copy_value(char *dst, size_t size, const char *v)
{
    snprintf(dst, size, "%s", v);
}

static bool load_case(const char *dir, const char *fname, struct tcase *tc)
{
    memset(tc, 0, sizeof(*tc));
    char path[1536];
    if ((size_t)snprintf(path, sizeof(path), "%s/%s", dir, fname) >= sizeof(path))
        return false;
    memset(tc, 0, sizeof(*tc));
    copy_value(tc->name, sizeof(tc->name), fname);
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        print_error("%s: cannot open\n", path);
        return false;
    }
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *text = malloc((size_t)size + 1);
    size_t got = fread(text, 1, (size_t)size, f);
    fclose(f);
    text[got] = '\0';

    bool ok = false, sep = false;
    char *line = text, *next;
    tc->expect_status = -1;
    for (; line && *line; line = next) {
        next = strchr(line, '\n');
        if (next)
            *next++ = '\0';
        size_t ll = strlen(line);
        if (ll && line[ll - 1] == '\r')
            line[--ll] = '\0';
        if (strcmp(line, "---") == 0) {
            sep = true;
            break;
        }
        if (line[0] == '#' || line[0] == '\0')
            continue;
        char *colon = strchr(line, ':');
        if (colon == NULL) {
            print_error("%s: header line without a colon: %s\n", fname, line);
            goto out;
        }
        *colon = '\0';
        char *v = colon + 1;
        while (*v == ' ' || *v == '\t')
            v++;
        if (strcmp(line, "description") == 0)
            copy_value(tc->description, sizeof(tc->description), v);
        else if (strcmp(line, "expect_status") == 0)
            tc->expect_status = atoi(v);
        else if (strcmp(line, "expect_cause") == 0)
            copy_value(tc->expect_cause, sizeof(tc->expect_cause), v);
        else if (strcmp(line, "upstream_must_not_receive") == 0)
            copy_value(tc->must_not, sizeof(tc->must_not), v);
        else {
            print_error("%s: unknown key \"%s\"\n", fname, line);
            goto out;
        }
    }
    if (!sep || !next || tc->description[0] == '\0' || tc->expect_status < 0 || tc->expect_cause[0] == '\0') {
        print_error("%s: needs description, expect_status, expect_cause and a --- line\n", fname);
        goto out;
    }
    tc->raw = malloc(MAX_RAW);
    ok = decode_raw(next, (size_t)(text + got - next), tc->raw, &tc->len, fname);
out:
    free(text);
    return ok;
}

/*
 * The verdict for a whole byte stream, as the gateway would reach it: parse a head, skip or
 * decode its body, repeat. 0 when every message is accepted, SL_EINCOMPLETE when the bytes
 * stop inside a message, else the first error.
 */
static int verdict(const char *raw, size_t len)
{
    static sl_header_t hdrs[100];
    size_t pos = 0;
    while (pos < len) {
        sl_h1_request_t req = {.headers = hdrs};
        int rc = sl_h1_parse_request(raw + pos, len - pos, &req, &limits);
        if (rc < 0)
            return rc;
        pos += (size_t)rc;
        if (req.body == SL_H1_BODY_LENGTH) {
            if (len - pos < req.content_length)
                return SL_EINCOMPLETE;
            pos += req.content_length;
        } else if (req.body == SL_H1_BODY_CHUNKED) {
            sl_h1_chunked_t d;
            sl_h1_chunked_init(&d);
            for (;;) {
                size_t used;
                sl_str_t out;
                rc = sl_h1_chunked_decode(&d, raw + pos, len - pos, &used, &out);
                pos += used;
                if (rc < 0)
                    return rc;
                if (rc == SL_H1_CHUNK_DONE)
                    break;
                if (rc == SL_H1_CHUNK_NEED_MORE)
                    return SL_EINCOMPLETE;
            }
        }
    }
    return 0;
}

static int cmp_names(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* SL_TEST_DATA (tests/unit/data) need not exist, and the kernel resolves ".." only through
 * directories that do: if the plain path fails, drop "/data" by hand. */
static DIR *open_cases(char *path, size_t size)
{
    DIR *dir;
    snprintf(path, size, "%s", CASES_DIR);
    if ((dir = opendir(path)) != NULL)
        return dir;
    snprintf(path, size, "%s", SL_TEST_DATA);
    char *slash = strrchr(path, '/');
    if (slash == NULL)
        return NULL;
    snprintf(slash, size - (size_t)(slash - path), "/../integration/cases/h1");
    return opendir(path);
}

static void test_cases(void **state)
{
    char cases_dir[1024];
    DIR *dir = open_cases(cases_dir, sizeof(cases_dir));
    if (dir == NULL)
        fail_msg("cannot open %s", CASES_DIR);
    char *names[1024];
    size_t n = 0;
    struct dirent *e;
    while ((e = readdir(dir)) != NULL && n < 1024) {
        size_t l = strlen(e->d_name);
        if (l > 5 && strcmp(e->d_name + l - 5, ".case") == 0)
            names[n++] = strdup(e->d_name);
    }
    closedir(dir);
    qsort(names, n, sizeof(names[0]), cmp_names);

    int failures = 0;
    for (size_t i = 0; i < n; i++) {
        struct tcase tc;
        if (!load_case(cases_dir, names[i], &tc)) {
            failures++;
            free(tc.raw);
            continue;
        }
        int rc = verdict(tc.raw, tc.len);
        int status = rc == 0 ? 200 : rc == SL_EINCOMPLETE ? 0 : sl_h1_error_status(rc);
        const char *cause = rc == 0 ? "-" : sl_cause_info(sl_h1_error_cause(rc))->name;
        if (status != tc.expect_status || strcmp(cause, tc.expect_cause) != 0) {
            print_error("%s: got %d %s (%s), want %d %s\n", tc.name, status, cause,
                        rc == 0                ? "accepted"
                        : rc == SL_EINCOMPLETE ? "incomplete"
                                               : sl_h1_error_reason(rc),
                        tc.expect_status, tc.expect_cause);
            failures++;
        }
        if (tc.must_not[0] && !memmem(tc.raw, tc.len, tc.must_not, strlen(tc.must_not))) {
            print_error("%s: upstream_must_not_receive \"%s\" is not in the request\n", tc.name, tc.must_not);
            failures++;
        }
        free(tc.raw);
    }
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    if (n < MIN_CASES)
        fail_msg("only %zu case files in %s", n, cases_dir);
    assert_int_equal(failures, 0);
}

/* The loader itself: escapes, ignored newlines and repeats decode as documented. */
static void test_raw_syntax(void **state)
{
    static const char src[] = "A\\r\\n\nB\\t\\0\\x41\\\\{repeat:x\\x3a:3}{repeat:ab:0}{repeat:k:v:2}\r\nZ";
    char *out = malloc(MAX_RAW);
    size_t len;
    assert_true(decode_raw(src, sizeof(src) - 1, out, &len, "inline"));
    static const char want[] = "A\r\nB\t\0A\\x:x:x:k:vk:vZ";
    assert_int_equal(len, sizeof(want) - 1);
    assert_memory_equal(out, want, len);
    free(out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_raw_syntax),
        cmocka_unit_test(test_cases),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
