/*
 * The cause table: one row per gateway-made response. The names and statuses are part of the
 * outside contract (DESIGN.md), so they change only together with docs/errors.md.
 */
#include "http/cause.h"

static const sl_cause_info_t causes[SL_CAUSE__COUNT] = {
    [SL_CAUSE_NONE] = {"", 0, SL_FAILURE_NONE, ""},
    [SL_CAUSE_BAD_REQUEST] = {"bad_request", 400, SL_FAILURE_NONE, "The request is malformed."},
    [SL_CAUSE_AUTH_MISSING] = {"auth_missing", 401, SL_FAILURE_AUTH, "This route requires credentials."},
    [SL_CAUSE_AUTH_INVALID] = {"auth_invalid", 401, SL_FAILURE_AUTH, "The credentials are not valid."},
    [SL_CAUSE_AUTH_EXPIRED] = {"auth_expired", 401, SL_FAILURE_AUTH, "The credentials have expired."},
    [SL_CAUSE_FORBIDDEN] = {"forbidden", 403, SL_FAILURE_AUTH, "You are not allowed to access this route."},
    [SL_CAUSE_ROUTE_NOT_FOUND] = {"route_not_found", 404, SL_FAILURE_ROUTING, "No route matches this request."},
    [SL_CAUSE_METHOD_NOT_ALLOWED] = {"method_not_allowed", 405, SL_FAILURE_ROUTING,
                                     "This method is not allowed on this path."},
    [SL_CAUSE_CLIENT_TIMEOUT] = {"client_timeout", 408, SL_FAILURE_LATENCY, "The request was not received in time."},
    [SL_CAUSE_REQUEST_TOO_LARGE] = {"request_too_large", 413, SL_FAILURE_RESOURCES,
                                    "The request body is larger than allowed."},
    [SL_CAUSE_URI_TOO_LONG] = {"uri_too_long", 414, SL_FAILURE_RESOURCES, "The request URI is too long."},
    [SL_CAUSE_RATE_LIMITED] = {"rate_limited", 429, SL_FAILURE_RATE_LIMIT, "Too many requests; retry later."},
    [SL_CAUSE_QUOTA_EXCEEDED] = {"quota_exceeded", 429, SL_FAILURE_RATE_LIMIT, "The request quota is used up."},
    [SL_CAUSE_HEADER_TOO_LARGE] = {"header_too_large", 431, SL_FAILURE_RESOURCES,
                                   "The request headers are larger than allowed."},
    [SL_CAUSE_UPSTREAM_CONNECT_FAILED] = {"upstream_connect_failed", 502, SL_FAILURE_CONNECTIVITY,
                                          "The gateway could not connect to the upstream service."},
    [SL_CAUSE_UPSTREAM_RESET] = {"upstream_reset", 502, SL_FAILURE_CONNECTIVITY,
                                 "The upstream service closed the connection before responding."},
    [SL_CAUSE_UPSTREAM_BAD_RESPONSE] = {"upstream_bad_response", 502, SL_FAILURE_CONNECTIVITY,
                                        "The upstream service sent an invalid response."},
    [SL_CAUSE_NO_HEALTHY_UPSTREAM] = {"no_healthy_upstream", 503, SL_FAILURE_CONNECTIVITY,
                                      "No healthy upstream target is available."},
    [SL_CAUSE_CIRCUIT_OPEN] = {"circuit_open", 503, SL_FAILURE_CONNECTIVITY,
                               "The upstream is failing; requests are paused for a while."},
    [SL_CAUSE_UPSTREAM_OVERLOADED] = {"upstream_overloaded", 503, SL_FAILURE_RESOURCES,
                                      "The upstream has too many requests in flight."},
    [SL_CAUSE_GATEWAY_OVERLOADED] = {"gateway_overloaded", 503, SL_FAILURE_RESOURCES,
                                     "The gateway is overloaded; retry later."},
    [SL_CAUSE_UPSTREAM_TIMEOUT] = {"upstream_timeout", 504, SL_FAILURE_LATENCY,
                                   "The upstream service did not respond in time."},
    [SL_CAUSE_INTERNAL_ERROR] = {"internal_error", 500, SL_FAILURE_RESOURCES, "The gateway failed internally."},
};

const sl_cause_info_t *sl_cause_info(enum sl_cause c)
{
    if ((unsigned)c >= SL_CAUSE__COUNT)
        c = SL_CAUSE_INTERNAL_ERROR;
    return &causes[c];
}

const char *sl_failure_name(enum sl_failure f)
{
    static const char *const names[SL_FAILURE__COUNT] = {"",           "connectivity", "routing",  "auth",
                                                         "rate_limit", "latency",      "resources"};
    return (unsigned)f < SL_FAILURE__COUNT ? names[f] : "";
}

int sl_cause_grpc_status(enum sl_cause c)
{
    enum {
        UNKNOWN = 2,
        DEADLINE_EXCEEDED = 4,
        PERMISSION_DENIED = 7,
        RESOURCE_EXHAUSTED = 8,
        UNIMPLEMENTED = 12,
        INTERNAL = 13,
        UNAVAILABLE = 14,
        UNAUTHENTICATED = 16
    };
    switch (c) {
    case SL_CAUSE_AUTH_MISSING:
    case SL_CAUSE_AUTH_INVALID:
    case SL_CAUSE_AUTH_EXPIRED:
        return UNAUTHENTICATED;
    case SL_CAUSE_FORBIDDEN:
        return PERMISSION_DENIED;
    case SL_CAUSE_ROUTE_NOT_FOUND:
    case SL_CAUSE_METHOD_NOT_ALLOWED:
        return UNIMPLEMENTED;
    case SL_CAUSE_CLIENT_TIMEOUT:
    case SL_CAUSE_UPSTREAM_TIMEOUT:
        return DEADLINE_EXCEEDED;
    case SL_CAUSE_REQUEST_TOO_LARGE:
    case SL_CAUSE_URI_TOO_LONG:
    case SL_CAUSE_HEADER_TOO_LARGE:
    case SL_CAUSE_RATE_LIMITED:
    case SL_CAUSE_QUOTA_EXCEEDED:
        return RESOURCE_EXHAUSTED;
    case SL_CAUSE_UPSTREAM_CONNECT_FAILED:
    case SL_CAUSE_UPSTREAM_RESET:
    case SL_CAUSE_NO_HEALTHY_UPSTREAM:
    case SL_CAUSE_CIRCUIT_OPEN:
    case SL_CAUSE_UPSTREAM_OVERLOADED:
    case SL_CAUSE_GATEWAY_OVERLOADED:
        return UNAVAILABLE;
    case SL_CAUSE_BAD_REQUEST:
    case SL_CAUSE_UPSTREAM_BAD_RESPONSE:
    case SL_CAUSE_INTERNAL_ERROR:
        return INTERNAL;
    default:
        return UNKNOWN;
    }
}
