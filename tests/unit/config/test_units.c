/*
 * Unit forms of the config language: every duration and size suffix, the numeric socket
 * address forms, and each way they are rejected (no unit, sign, fraction, case, overflow).
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "common/error.h"
#include "config/config.h"

static int duration(const char *s, uint64_t *ms)
{
    *ms = 12345; /* must stay untouched on error */
    return sl_config_parse_duration(sl_str_from_cstr(s), ms);
}

static int size(const char *s, uint64_t *bytes)
{
    *bytes = 12345;
    return sl_config_parse_size(sl_str_from_cstr(s), bytes);
}

static void test_duration_units(void **state)
{
    static const struct {
        const char *in;
        uint64_t ms;
    } ok[] = {
        {"0ms", 0},
        {"250ms", 250},
        {"0s", 0},
        {"30s", 30000},
        {"5m", 300000},
        {"1h", 3600000},
        {"2d", 172800000},
        {"007s", 7000},
        {"18446744073709551615ms", UINT64_MAX},
        {"213503982334d", 213503982334ull * 86400000ull},
    };
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        uint64_t ms;
        assert_int_equal(duration(ok[i].in, &ms), 0);
        assert_true(ms == ok[i].ms);
    }
}

static void test_duration_errors(void **state)
{
    static const char *const invalid[] = {
        "",    "30", "s",  "-1s",  "+1s",   "1.5s", "30S",  "30Ms", " 30s", "30s ",
        "3 s", "1w", "1y", "1ms1", "1h30m", "ms",   "0x1s", "1sec", "30ss", "1 ms",
    };
    for (size_t i = 0; i < sizeof(invalid) / sizeof(invalid[0]); i++) {
        uint64_t ms;
        int rc = duration(invalid[i], &ms);
        if (rc != SL_EINVALID)
            fail_msg("'%s' gave %d", invalid[i], rc);
        assert_true(ms == 12345);
    }
    uint64_t ms;
    assert_int_equal(duration("18446744073709551616ms", &ms), SL_ETOOBIG);
    assert_int_equal(duration("213503982335d", &ms), SL_ETOOBIG);
    assert_int_equal(duration("18446744073709551615s", &ms), SL_ETOOBIG);
    assert_int_equal(duration("99999999999999999999999999999h", &ms), SL_ETOOBIG);
    /* A bad unit wins over a big number: it is a typo, not an overflow. */
    assert_int_equal(duration("99999999999999999999999999999x", &ms), SL_EINVALID);
    assert_true(ms == 12345);
}

static void test_size_units(void **state)
{
    static const struct {
        const char *in;
        uint64_t bytes;
    } ok[] = {
        {"0", 0},
        {"512", 512},
        {"512b", 512},
        {"16k", 16384},
        {"16kb", 16384},
        {"16KB", 16384},
        {"16Kb", 16384},
        {"16kib", 16384},
        {"16KiB", 16384},
        {"10m", 10485760},
        {"10mb", 10485760},
        {"10MB", 10485760},
        {"10mib", 10485760},
        {"1g", 1073741824},
        {"1gb", 1073741824},
        {"1gib", 1073741824},
        {"17179869183gb", 17179869183ull << 30},
        {"18446744073709551615", UINT64_MAX},
    };
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        uint64_t b;
        if (size(ok[i].in, &b) != 0)
            fail_msg("'%s' rejected", ok[i].in);
        assert_true(b == ok[i].bytes);
    }
}

static void test_size_errors(void **state)
{
    static const char *const invalid[] = {"",      "kb",  "-1",   "+1",   "1.5kb", "16kq", "16 kb", " 16kb",
                                          "16kb ", "1tb", "1kbb", "0x10", "1e3",   "mb",   "16ki"};
    for (size_t i = 0; i < sizeof(invalid) / sizeof(invalid[0]); i++) {
        uint64_t b;
        int rc = size(invalid[i], &b);
        if (rc != SL_EINVALID)
            fail_msg("'%s' gave %d", invalid[i], rc);
        assert_true(b == 12345);
    }
    uint64_t b;
    assert_int_equal(size("17179869184gb", &b), SL_ETOOBIG);
    assert_int_equal(size("18446744073709551616", &b), SL_ETOOBIG);
    assert_int_equal(size("18014398509481984k", &b), SL_ETOOBIG);
    assert_true(b == 12345);
}

static void test_sockaddr(void **state)
{
    struct sockaddr_storage ss;
    socklen_t len;
    char buf[INET6_ADDRSTRLEN];

    assert_int_equal(sl_config_parse_sockaddr(SL_STR_LIT("127.0.0.1:8080"), &ss, &len), 0);
    const struct sockaddr_in *sin = (const struct sockaddr_in *)&ss;
    assert_int_equal(ss.ss_family, AF_INET);
    assert_int_equal(len, sizeof(struct sockaddr_in));
    assert_int_equal(ntohs(sin->sin_port), 8080);
    assert_string_equal(inet_ntop(AF_INET, &sin->sin_addr, buf, sizeof(buf)), "127.0.0.1");

    assert_int_equal(sl_config_parse_sockaddr(SL_STR_LIT(":80"), &ss, &len), 0);
    assert_int_equal(ss.ss_family, AF_INET);
    assert_int_equal(ntohs(sin->sin_port), 80);
    assert_string_equal(inet_ntop(AF_INET, &sin->sin_addr, buf, sizeof(buf)), "0.0.0.0");

    assert_int_equal(sl_config_parse_sockaddr(SL_STR_LIT("[::1]:65535"), &ss, &len), 0);
    const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)&ss;
    assert_int_equal(ss.ss_family, AF_INET6);
    assert_int_equal(len, sizeof(struct sockaddr_in6));
    assert_int_equal(ntohs(sin6->sin6_port), 65535);
    assert_string_equal(inet_ntop(AF_INET6, &sin6->sin6_addr, buf, sizeof(buf)), "::1");

    assert_int_equal(sl_config_parse_sockaddr(SL_STR_LIT("[2001:db8::10]:1"), &ss, &len), 0);
    assert_string_equal(inet_ntop(AF_INET6, &sin6->sin6_addr, buf, sizeof(buf)), "2001:db8::10");
    assert_int_equal(sl_config_parse_sockaddr(SL_STR_LIT("[::ffff:10.1.2.3]:1"), &ss, &len), 0);
    assert_int_equal(ss.ss_family, AF_INET6);
}

static void test_sockaddr_errors(void **state)
{
    static const char *const invalid[] = {
        "",
        ":",
        "127.0.0.1",
        "127.0.0.1:",
        "127.0.0.1:0",
        "127.0.0.1:65536",
        "127.0.0.1:-1",
        "127.0.0.1:80x",
        "127.0.0.1: 80",
        "localhost:80",
        "example.com:80",
        "::1:80",
        "[::1]",
        "[::1]80",
        "[::1]:",
        "[]:80",
        "[1.2.3.4]:80",
        "[fe80::1%eth0]:80",
        "[::1:80",
        "::1]:80",
        "1.2.3.4.5:80",
        "256.1.1.1:80",
        " 1.2.3.4:80",
    };
    for (size_t i = 0; i < sizeof(invalid) / sizeof(invalid[0]); i++) {
        struct sockaddr_storage ss;
        socklen_t len = 77;
        int rc = sl_config_parse_sockaddr(sl_str_from_cstr(invalid[i]), &ss, &len);
        if (rc != SL_EINVALID)
            fail_msg("'%s' gave %d", invalid[i], rc);
        assert_int_equal(len, 77);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_duration_units), cmocka_unit_test(test_duration_errors),
        cmocka_unit_test(test_size_units),     cmocka_unit_test(test_size_errors),
        cmocka_unit_test(test_sockaddr),       cmocka_unit_test(test_sockaddr_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
