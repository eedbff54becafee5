/*
 * The one Lua script the store runs in Redis (store/store.h), and its SHA1 for EVALSHA. Four
 * modes share it so a connection loads one script: 'a' GCRA admit (the twin of sl_gcra_decide,
 * filters/gcra.c), 'l' lease a slice of a key's budget, 'r' return unused leased units, 'q' count
 * a calendar quota. docs/internals/store.md explains each line's reason.
 */
#include <openssl/evp.h>
#include <stdio.h>
#include <string.h>

#include "common/bug.h"
#include "store/internal.h"

/* Tests inject the clock (the optional last two arguments); keys still expire on Redis' real
 * clock, so an injected clock pads TTLs by a minute lest a key vanish between two test steps.
 * Numbers: Redis' Lua is 5.1, every number a double, so absolute nanoseconds (~1.8e18) are not
 * exact. TATs are stored as decimal ns and only their distance to now, split in seconds and
 * nanoseconds, enters arithmetic: exact while distances stay below 2^53 ns (104 days). */
const char sl__store_script[] =
    "local mode = ARGV[1]\n"
    "local pad = 0\n"
    "local function clock(i)\n"
    "  if ARGV[i] then pad = 60000 return tonumber(ARGV[i]), tonumber(ARGV[i + 1]) end\n"
    "  local t = redis.call('TIME')\n"
    "  return tonumber(t[1]), tonumber(t[2]) * 1000\n"
    "end\n"
    "local function idiv(a, b)\n"
    "  local q = math.floor(a / b)\n"
    "  if q * b > a then q = q - 1 elseif (q + 1) * b <= a then q = q + 1 end\n"
    "  return q\n"
    "end\n"
    "local function ahead_of(key, sec, nsec)\n"
    "  local v = redis.call('GET', key)\n"
    "  if not v or #v < 10 then return 0 end\n"
    "  local d = (tonumber(string.sub(v, 1, -10)) - sec) * 1e9 + (tonumber(string.sub(v, -9)) - nsec)\n"
    "  if d > 0 then return d end\n"
    "  return 0\n"
    "end\n"
    "local function store(key, sec, nsec, ahead)\n"
    "  if ahead <= 0 then redis.call('DEL', key) return end\n"
    "  local carry = idiv(nsec + ahead, 1e9)\n"
    "  local s, n = sec + carry, nsec + ahead - carry * 1e9\n"
    "  redis.call('SET', key, string.format('%d%09d', s, n), 'PX', idiv(ahead + 999999, 1e6) + pad)\n"
    "end\n"
    "if mode == 'a' then\n"
    "  local T, tol, cost = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])\n"
    "  local sec, nsec = clock(5)\n"
    "  local used = ahead_of(KEYS[1], sec, nsec)\n"
    "  local window, inc = tol + T, cost * T\n"
    "  local ahead = used + inc\n"
    "  local limit = idiv(tol, T) + 1\n"
    "  if ahead <= window then\n"
    "    store(KEYS[1], sec, nsec, ahead)\n"
    "    return {1, limit, idiv(window - ahead, T), 0, ahead, sec, nsec}\n"
    "  end\n"
    "  local rem, retry = 0, -1\n"
    "  if used <= window then rem = idiv(window - used, T) end\n"
    "  if inc <= window then retry = ahead - window end\n"
    "  return {0, limit, rem, retry, used, sec, nsec}\n"
    "elseif mode == 'l' then\n"
    "  local T, tol, want = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])\n"
    "  local sec, nsec = clock(5)\n"
    "  local used = ahead_of(KEYS[1], sec, nsec)\n"
    "  local window = tol + T\n"
    "  local limit = idiv(tol, T) + 1\n"
    "  local n = 0\n"
    "  if used + T <= window then n = math.min(want, idiv(window - used, T)) end\n"
    "  if n > 0 then\n"
    "    local ahead = used + n * T\n"
    "    store(KEYS[1], sec, nsec, ahead)\n"
    "    return {n, limit, idiv(window - ahead, T), 0, ahead, sec, nsec}\n"
    "  end\n"
    "  return {0, limit, 0, used + T - window, used, sec, nsec}\n"
    "elseif mode == 'r' then\n"
    "  local T, units = tonumber(ARGV[2]), tonumber(ARGV[3])\n"
    "  local sec, nsec = clock(4)\n"
    "  local used = ahead_of(KEYS[1], sec, nsec)\n"
    "  if used > 0 then store(KEYS[1], sec, nsec, used - units * T) end\n"
    "  return used\n"
    "elseif mode == 'q' then\n"
    "  local win, limit, cost = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])\n"
    "  local sec, nsec = clock(5)\n"
    "  local start, stop\n"
    "  if win == 'h' then\n"
    "    start = sec - sec % 3600; stop = start + 3600\n"
    "  elseif win == 'd' then\n"
    "    start = sec - sec % 86400; stop = start + 86400\n"
    "  else\n"
    /* Howard Hinnant's civil_from_days and days_from_civil (proleptic Gregorian, UTC). */
    "    local z = idiv(sec, 86400) + 719468\n"
    "    local era = idiv(z, 146097)\n"
    "    local doe = z - era * 146097\n"
    "    local yoe = idiv(doe - idiv(doe, 1460) + idiv(doe, 36524) - idiv(doe, 146096), 365)\n"
    "    local doy = doe - (365 * yoe + idiv(yoe, 4) - idiv(yoe, 100))\n"
    "    local mp = idiv(5 * doy + 2, 153)\n"
    "    local y, m = yoe + era * 400, mp + 3\n"
    "    if mp >= 10 then m = mp - 9 end\n"
    "    if m <= 2 then y = y + 1 end\n"
    "    local function days(yy, mm)\n"
    "      if mm <= 2 then yy = yy - 1 end\n"
    "      local e = idiv(yy, 400)\n"
    "      local ye = yy - e * 400\n"
    "      local dy = idiv(153 * ((mm + 9) % 12) + 2, 5)\n"
    "      return e * 146097 + ye * 365 + idiv(ye, 4) - idiv(ye, 100) + dy - 719468\n"
    "    end\n"
    "    start = days(y, m) * 86400\n"
    "    if m == 12 then stop = days(y + 1, 1) * 86400 else stop = days(y, m + 1) * 86400 end\n"
    "  end\n"
    "  local h = redis.call('HMGET', KEYS[1], 'w', 'u')\n"
    "  local used = 0\n"
    "  if tonumber(h[1]) == start then used = tonumber(h[2]) or 0 end\n"
    "  local reset = (stop - sec) * 1e9 - nsec\n"
    "  if used + cost > limit then return {0, used, reset, sec, nsec} end\n"
    "  if cost > 0 then\n"
    "    if used == 0 then redis.call('HSET', KEYS[1], 'w', start, 'u', 0) end\n"
    "    used = redis.call('HINCRBY', KEYS[1], 'u', cost)\n"
    "    redis.call('EXPIREAT', KEYS[1], stop)\n"
    "  end\n"
    "  return {1, used, reset, sec, nsec}\n"
    "end\n"
    "return redis.error_reply('sluice: unknown mode')\n";

void sl__store_script_sha(char out[41])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    SL_BUG_ON(EVP_Digest(sl__store_script, strlen(sl__store_script), md, &n, EVP_sha1(), NULL) != 1 || n != 20);
    static const char hex[] = "0123456789abcdef";
    for (unsigned i = 0; i < 20; i++) {
        out[2 * i] = hex[md[i] >> 4];
        out[2 * i + 1] = hex[md[i] & 15];
    }
    out[40] = '\0';
}
