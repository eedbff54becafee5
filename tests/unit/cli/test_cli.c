/*
 * Unit tests of the operator commands' building blocks: URL and address parsing (good and bad
 * input), aligned tables, and the blocking HTTP client against a scripted loopback server
 * (Content-Length, chunked and close-delimited bodies, a 1xx first, garbage, a silent server
 * that must end in a timeout, a refused connect, TLS to a server that does not speak it) and the
 * HTTP/2 preface check (SETTINGS first, or the reason it is not).
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "cli/client.h"
#include "cli/table.h"
#include "common/error.h"

/* ---- URLs ---------------------------------------------------------------------------------- */

static void test_url_good(void **state)
{
    sl_cli_url_t u;
    assert_int_equal(sl_cli_url_parse("http://127.0.0.1:8001", &u, NULL), 0);
    assert_string_equal(u.host, "127.0.0.1");
    assert_int_equal(u.port, 8001);
    assert_string_equal(u.path, "/");
    assert_true(u.host_is_ip);

    assert_int_equal(sl_cli_url_parse("HTTP://Example.COM/a/b?x=1#frag", &u, NULL), 0);
    assert_string_equal(u.host, "Example.COM");
    assert_int_equal(u.port, 80);
    assert_string_equal(u.path, "/a/b?x=1");
    assert_false(u.host_is_ip);

    assert_int_equal(sl_cli_url_parse("http://[::1]:9001/healthz", &u, NULL), 0);
    assert_string_equal(u.host, "::1");
    assert_int_equal(u.port, 9001);
    assert_string_equal(u.path, "/healthz");
    assert_true(u.host_is_ip);

    assert_int_equal(sl_cli_url_parse("http://h?q=1", &u, NULL), 0);
    assert_string_equal(u.path, "/?q=1");

    assert_int_equal(sl_cli_url_parse("http://a.b:65535/", &u, NULL), 0);
    assert_int_equal(u.port, 65535);

    char buf[256];
    assert_int_equal(sl_cli_url_parse("http://[::1]:9001/x", &u, NULL), 0);
    sl_cli_url_format(&u, buf, sizeof(buf));
    assert_string_equal(buf, "http://[::1]:9001/x");
}

static void test_url_https(void **state)
{
    sl_cli_url_t u;
    char buf[256];
    assert_int_equal(sl_cli_url_parse("https://api.example.com/healthz", &u, NULL), 0);
    assert_true(u.tls);
    assert_int_equal(u.port, 443);
    assert_string_equal(u.host, "api.example.com");
    assert_string_equal(u.path, "/healthz");
    sl_cli_url_format(&u, buf, sizeof(buf));
    assert_string_equal(buf, "https://api.example.com:443/healthz");

    assert_int_equal(sl_cli_url_parse("HTTPS://[::1]:8443", &u, NULL), 0);
    assert_true(u.tls && u.host_is_ip);
    assert_int_equal(u.port, 8443);

    assert_int_equal(sl_cli_url_parse("http://h/", &u, NULL), 0);
    assert_false(u.tls);
    assert_int_equal(u.port, 80);

    /* Targets written https://host:port are TLS ones; the port stays required. */
    assert_int_equal(sl_cli_url_from_address("https://10.0.0.7:8443", "/hz", &u, NULL), 0);
    assert_true(u.tls);
    assert_string_equal(u.host, "10.0.0.7");
    assert_int_equal(u.port, 8443);
    assert_string_equal(u.path, "/hz");
    assert_int_equal(sl_cli_url_from_address("10.0.0.7:8443", "/hz", &u, NULL), 0);
    assert_false(u.tls);
    const char *why = NULL;
    assert_int_equal(sl_cli_url_from_address("https://h", "/", &u, &why), SL_EINVALID);
    assert_non_null(strstr(why, "host:port"));
}

static void test_url_bad(void **state)
{
    static const struct {
        const char *url;
        const char *why; /* a word of the reason */
    } bad[] = {
        {"127.0.0.1:8001", "expected http://"},
        {"ftp://h/", "expected http://"},
        {"https://", "host is empty"},
        {"https://h:0/", "port"},
        {"http://", "host is empty"},
        {"http:///x", "host is empty"},
        {"http://:80/", "host is empty"},
        {"http://h:0/", "port"},
        {"http://h:65536/", "port"},
        {"http://h:123456/", "port"},
        {"http://h:/", "port"},
        {"http://h:8x/", "port"},
        {"http://h:-1/", "port"},
        {"http://[::1/", "']'"},
        {"http://[::1]x/", "':port'"},
        {"http://[nope]:80/", "IPv6"},
        {"http://user@h/", "user information"},
        {"http://h o/", "character"},
        {"http://h/a b", "space"},
        {"http://h/a\x01", "control"},
        {"http://h/\xc3\xa9", "non-ASCII"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        sl_cli_url_t u;
        memset(&u, 0x5a, sizeof(u));
        const char *why = NULL;
        int rc = sl_cli_url_parse(bad[i].url, &u, &why);
        if (rc != SL_EINVALID || why == NULL || strstr(why, bad[i].why) == NULL)
            fail_msg("%s: rc %d, why '%s' (expected '%s')", bad[i].url, rc, why ? why : "(null)", bad[i].why);
        /* Untouched on failure. */
        assert_int_equal((unsigned char)u.host[0], 0x5a);
    }
    char longhost[400];
    memset(longhost, 'a', sizeof(longhost));
    memcpy(longhost, "http://", 7);
    longhost[sizeof(longhost) - 1] = '\0';
    sl_cli_url_t u;
    assert_int_equal(sl_cli_url_parse(longhost, &u, NULL), SL_EINVALID);
}

static void test_address(void **state)
{
    sl_cli_url_t u;
    const char *why = NULL;
    assert_int_equal(sl_cli_url_from_address("127.0.0.1:9001", "/healthz", &u, &why), 0);
    assert_string_equal(u.host, "127.0.0.1");
    assert_int_equal(u.port, 9001);
    assert_string_equal(u.path, "/healthz");
    assert_int_equal(sl_cli_url_from_address("[::1]:9001", NULL, &u, &why), 0);
    assert_string_equal(u.host, "::1");
    assert_string_equal(u.path, "/");
    assert_int_equal(sl_cli_url_from_address("users-2.internal:80", "/", &u, &why), 0);
    assert_false(u.host_is_ip);
    assert_int_equal(sl_cli_url_from_address("users-2.internal", "/", &u, &why), SL_EINVALID);
    assert_non_null(strstr(why, "host:port"));
    assert_int_equal(sl_cli_url_from_address("h:99999", "/", &u, &why), SL_EINVALID);
    assert_int_equal(sl_cli_url_from_address("h:80", "healthz", &u, &why), SL_EINVALID);
}

/* ---- tables -------------------------------------------------------------------------------- */

static char *render(const sl_cli_table_t *t)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *fp = open_memstream(&buf, &len);
    sl_cli_table_print(t, fp);
    fclose(fp);
    return buf;
}

static void test_table(void **state)
{
    const char *head[] = {"NAME", "N", "NOTE"};
    sl_cli_table_t *t = sl_cli_table_create(3, head);
    sl_cli_table_align_right(t, 1);
    assert_int_equal(sl_cli_table_rows(t), 0);
    sl_cli_table_add(t, (const char *[]){"users", "1", "ok"});
    sl_cli_table_add(t, (const char *[]){"a", "1234", NULL});
    sl_cli_table_add(t, (const char *[]){"caf\xc3\xa9", "12", "two\nlines"});
    assert_int_equal(sl_cli_table_rows(t), 3);
    char *out = render(t);
    assert_string_equal(out, "NAME      N  NOTE\n"
                             "users     1  ok\n"
                             "a      1234  -\n"
                             "caf\xc3\xa9     12  two lines\n");
    free(out);
    sl_cli_table_destroy(t);

    /* Only the header: still a line, no trailing blanks. */
    const char *one[] = {"ONLY"};
    t = sl_cli_table_create(1, one);
    out = render(t);
    assert_string_equal(out, "ONLY\n");
    free(out);
    sl_cli_table_destroy(t);
}

/* ---- the client ---------------------------------------------------------------------------- */

typedef struct server {
    int fd;
    uint16_t port;
    const char *reply; /* NULL: accept, read, never answer */
    size_t reply_len;
    char request[4096];
    pthread_t thread;
} server_t;

static void *serve(void *arg)
{
    server_t *s = arg;
    int c = accept(s->fd, NULL, NULL);
    if (c < 0)
        return NULL;
    size_t n = 0;
    while (n < sizeof(s->request) - 1) {
        ssize_t r = recv(c, s->request + n, sizeof(s->request) - 1 - n, 0);
        if (r <= 0)
            break;
        n += (size_t)r;
        s->request[n] = '\0';
        if (strstr(s->request, "\r\n\r\n") != NULL)
            break;
    }
    if (s->reply != NULL) {
        send(c, s->reply, s->reply_len, MSG_NOSIGNAL);
        shutdown(c, SHUT_WR);
        char sink[256];
        while (recv(c, sink, sizeof(sink), 0) > 0) {
        }
    } else {
        /* Silent until the client gives up. */
        char sink[256];
        while (recv(c, sink, sizeof(sink), 0) > 0) {
        }
    }
    close(c);
    return NULL;
}

static int listener(uint16_t *port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    assert_int_equal(listen(fd, 4), 0);
    socklen_t len = sizeof(a);
    getsockname(fd, (struct sockaddr *)&a, &len);
    *port = ntohs(a.sin_port);
    return fd;
}

static int fetch(const char *reply, int timeout_ms, sl_cli_response_t *resp, sl_cli_timings_t *t, server_t *s)
{
    memset(s, 0, sizeof(*s));
    s->fd = listener(&s->port);
    s->reply = reply;
    s->reply_len = reply ? strlen(reply) : 0;
    pthread_create(&s->thread, NULL, serve, s);
    sl_cli_url_t u;
    char url[64];
    snprintf(url, sizeof(url), "http://127.0.0.1:%u/status?x=1", (unsigned)s->port);
    assert_int_equal(sl_cli_url_parse(url, &u, NULL), 0);
    sl_cli_request_t req = {.method = "GET", .token = "sekrit", .timeout_ms = timeout_ms};
    int rc = sl_cli_http(&u, &req, resp, t);
    pthread_join(s->thread, NULL);
    close(s->fd);
    return rc;
}

static void test_http_length(void **state)
{
    server_t s;
    sl_cli_response_t r;
    sl_cli_timings_t t;
    const char *reply =
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{\"a\":\"b\"}\n";
    assert_int_equal(fetch(reply, 2000, &r, &t, &s), SL_ECLOSED);
    /* The body is one byte short of 11: the client must not accept a truncated answer. */
    reply = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 10\r\n\r\n{\"a\":\"b\"}\n";
    assert_int_equal(fetch(reply, 2000, &r, &t, &s), 0);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "{\"a\":\"b\"}\n");
    assert_int_equal(r.body_len, 10);
    assert_string_equal(r.content_type, "application/json");
    assert_non_null(strstr(s.request, "GET /status?x=1 HTTP/1.1\r\n"));
    assert_non_null(strstr(s.request, "\r\nAuthorization: Bearer sekrit\r\n"));
    assert_non_null(strstr(s.request, "\r\nConnection: close\r\n"));
    assert_non_null(strstr(s.request, "\r\nHost: 127.0.0.1:"));
    assert_true(t.dns_ms == 0);
    assert_true(t.connect_ms >= 0);
    assert_true(t.first_byte_ms >= 0);
    assert_true(t.total_ms >= t.first_byte_ms);
    sl_cli_response_dispose(&r);
}

static void test_http_chunked_close_interim(void **state)
{
    server_t s;
    sl_cli_response_t r;
    sl_cli_timings_t t;
    assert_int_equal(fetch("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 503 Service Unavailable\r\n"
                           "Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\nX-T: 1\r\n\r\n",
                           2000, &r, &t, &s),
                     0);
    assert_int_equal(r.status, 503);
    assert_string_equal(r.body, "abcde");
    sl_cli_response_dispose(&r);

    assert_int_equal(fetch("HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end", 2000, &r, &t, &s), 0);
    assert_string_equal(r.body, "until the end");
    sl_cli_response_dispose(&r);

    assert_int_equal(fetch("HTTP/1.1 204 No Content\r\n\r\n", 2000, &r, &t, &s), 0);
    assert_int_equal(r.status, 204);
    assert_int_equal(r.body_len, 0);
    sl_cli_response_dispose(&r);
}

/* sl_cli_http (or, with `h2`, sl_cli_h2_preface) against a scripted server sending
 * reply[0..len) (NULs allowed) once it has read a blank line. */
static int fetch_raw(const char *scheme, const char *reply, size_t len, sl_cli_request_t *req, sl_cli_timings_t *t,
                     server_t *s, bool h2)
{
    memset(s, 0, sizeof(*s));
    s->fd = listener(&s->port);
    s->reply = reply;
    s->reply_len = len;
    pthread_create(&s->thread, NULL, serve, s);
    sl_cli_url_t u;
    char url[64];
    snprintf(url, sizeof(url), "%s://127.0.0.1:%u/", scheme, (unsigned)s->port);
    assert_int_equal(sl_cli_url_parse(url, &u, NULL), 0);
    sl_cli_response_t resp;
    int rc = h2 ? sl_cli_h2_preface(&u, req, t) : sl_cli_http(&u, req, &resp, t);
    if (rc == 0 && !h2)
        sl_cli_response_dispose(&resp);
    pthread_join(s->thread, NULL);
    close(s->fd);
    return rc;
}

static void test_tls_to_plain_server(void **state)
{
    server_t s;
    sl_cli_timings_t t;
    char detail[256];
    sl_cli_request_t req = {.method = "GET", .timeout_ms = 2000, .detail = detail, .detail_len = sizeof(detail)};
    const char *reply = "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    /* The server waits for a blank line the ClientHello never has: the handshake times out
     * within the request's timeout, and says so as a TLS failure. */
    req.timeout_ms = 300;
    int rc = fetch_raw("https", reply, strlen(reply), &req, &t, &s, false);
    assert_int_equal(rc, SL_CLI_ETLS);
    assert_string_equal(detail, "tls: handshake timed out");
    assert_true(t.connect_ms >= 0);
    assert_true(t.tls_ms < 0);
    assert_true(t.first_byte_ms < 0);
    /* A ClientHello was sent: a TLS handshake record (content type 22). */
    assert_int_equal((unsigned char)s.request[0], 22);

    /* Plain http: no TLS time. */
    req.timeout_ms = 2000;
    assert_int_equal(fetch_raw("http", reply, strlen(reply), &req, &t, &s, false), 0);
    assert_true(t.tls_ms < 0);
    assert_true(t.connect_ms >= 0);
}

static void test_h2_preface(void **state)
{
    server_t s;
    sl_cli_timings_t t;
    char detail[256];
    sl_cli_request_t req = {.timeout_ms = 2000, .detail = detail, .detail_len = sizeof(detail)};
    /* SETTINGS with one setting (MAX_CONCURRENT_STREAMS 100), then a PING that is never read. */
    static const char settings[] = "\x00\x00\x06\x04\x00\x00\x00\x00\x00\x00\x03\x00\x00\x00\x64"
                                   "\x00\x00\x08\x06\x00\x00\x00\x00\x00\x01\x02\x03\x04\x05\x06\x07\x08";
    assert_int_equal(fetch_raw("http", settings, sizeof(settings) - 1, &req, &t, &s, true), 0);
    assert_memory_equal(s.request, "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 24);
    assert_true(t.first_byte_ms >= 0);
    assert_true(t.total_ms >= t.first_byte_ms);
    assert_true(t.tls_ms < 0);

    /* The SETTINGS header arrives, its payload never does. */
    req.timeout_ms = 300;
    assert_int_equal(fetch_raw("http", settings, 12, &req, &t, &s, true), SL_CLI_EH2);
    assert_string_equal(detail, "h2: the server closed the connection before its SETTINGS");
    req.timeout_ms = 2000;

    static const char goaway[] = "\x00\x00\x08\x07\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01";
    assert_int_equal(fetch_raw("http", goaway, sizeof(goaway) - 1, &req, &t, &s, true), SL_CLI_EH2);
    assert_string_equal(detail, "h2: the server's first frame is GOAWAY, not SETTINGS");

    static const char ack[] = "\x00\x00\x00\x04\x01\x00\x00\x00\x00";
    assert_int_equal(fetch_raw("http", ack, sizeof(ack) - 1, &req, &t, &s, true), SL_CLI_EH2);
    assert_string_equal(detail, "h2: the server's SETTINGS frame is malformed");

    static const char odd[] = "\x00\x00\x05\x04\x00\x00\x00\x00\x00\x00\x03\x00\x00\x00";
    assert_int_equal(fetch_raw("http", odd, sizeof(odd) - 1, &req, &t, &s, true), SL_CLI_EH2);
    assert_string_equal(detail, "h2: the server's SETTINGS frame is malformed");

    const char *h1 = "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    assert_int_equal(fetch_raw("http", h1, strlen(h1), &req, &t, &s, true), SL_CLI_EH2);
    assert_string_equal(detail, "h2: the server answered in HTTP/1.x, not HTTP/2");

    assert_int_equal(fetch_raw("http", "", 0, &req, &t, &s, true), SL_CLI_EH2);
    assert_string_equal(detail, "h2: the server closed the connection before its SETTINGS");
    assert_true(t.first_byte_ms < 0);
}

static void test_http_errors(void **state)
{
    server_t s;
    sl_cli_response_t r;
    memset(&r, 0x5a, sizeof(r));
    sl_cli_timings_t t;
    int rc = fetch("SSH-2.0-OpenSSH_9.2\r\n\r\n", 2000, &r, &t, &s);
    assert_true(rc <= -10100 && rc >= -10199);
    assert_non_null(sl_cli_strerror(rc));
    assert_int_equal((unsigned char)r.content_type[0], 0x5a);

    assert_int_equal(fetch("", 2000, &r, &t, &s), SL_ECLOSED);
    assert_string_equal(sl_cli_strerror(SL_ECLOSED), "connection closed before a complete response");

    /* A server that never answers: a timeout, not a hang. */
    assert_int_equal(fetch(NULL, 300, &r, &t, &s), SL_ETIMEDOUT);
    assert_true(t.connect_ms >= 0);
    assert_true(t.first_byte_ms < 0);
    assert_string_equal(sl_cli_strerror(SL_ETIMEDOUT), "timed out");

    /* Nobody listening. */
    uint16_t port;
    int fd = listener(&port);
    close(fd);
    char url[64];
    snprintf(url, sizeof(url), "http://127.0.0.1:%u/", (unsigned)port);
    sl_cli_url_t u;
    assert_int_equal(sl_cli_url_parse(url, &u, NULL), 0);
    sl_cli_request_t req = {.method = "GET", .timeout_ms = 1000};
    assert_int_equal(sl_cli_http(&u, &req, &r, &t), -ECONNREFUSED);
    assert_string_equal(sl_cli_strerror(-ECONNREFUSED), "connection refused");
    assert_true(t.connect_ms < 0);

    /* A name that does not resolve (.invalid is reserved, RFC 6761 §6.4). */
    assert_int_equal(sl_cli_url_parse("http://no-such-host.invalid/", &u, NULL), 0);
    rc = sl_cli_http(&u, &req, &r, &t);
    assert_true(rc == SL_ENOTFOUND || rc == SL_ETIMEDOUT);
    assert_true(t.connect_ms < 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_url_good),
        cmocka_unit_test(test_url_bad),
        cmocka_unit_test(test_address),
        cmocka_unit_test(test_table),
        cmocka_unit_test(test_http_length),
        cmocka_unit_test(test_http_chunked_close_interim),
        cmocka_unit_test(test_http_errors),
        cmocka_unit_test(test_url_https),
        cmocka_unit_test(test_tls_to_plain_server),
        cmocka_unit_test(test_h2_preface),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
