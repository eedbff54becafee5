/*
 * The causes of responses sluice makes itself (DESIGN.md "Errors the gateway makes"): each has
 * a status, a stable name for the `Sluice-Error` header, logs and metrics, a default human
 * message, and the failure category `sluice doctor` files it under.
 */
#ifndef SL_HTTP_CAUSE_H
#define SL_HTTP_CAUSE_H

#include <stdint.h>

enum sl_cause {
    SL_CAUSE_NONE = 0, /* the response came from the upstream or a respond route */
    SL_CAUSE_BAD_REQUEST,
    SL_CAUSE_AUTH_MISSING,
    SL_CAUSE_AUTH_INVALID,
    SL_CAUSE_AUTH_EXPIRED,
    SL_CAUSE_FORBIDDEN,
    SL_CAUSE_ROUTE_NOT_FOUND,
    SL_CAUSE_METHOD_NOT_ALLOWED,
    SL_CAUSE_CLIENT_TIMEOUT,
    SL_CAUSE_REQUEST_TOO_LARGE,
    SL_CAUSE_URI_TOO_LONG,
    SL_CAUSE_RATE_LIMITED,
    SL_CAUSE_QUOTA_EXCEEDED,
    SL_CAUSE_HEADER_TOO_LARGE,
    SL_CAUSE_UPSTREAM_CONNECT_FAILED,
    SL_CAUSE_UPSTREAM_RESET,
    SL_CAUSE_UPSTREAM_BAD_RESPONSE,
    SL_CAUSE_NO_HEALTHY_UPSTREAM,
    SL_CAUSE_CIRCUIT_OPEN,
    SL_CAUSE_UPSTREAM_OVERLOADED,
    SL_CAUSE_GATEWAY_OVERLOADED,
    SL_CAUSE_UPSTREAM_TIMEOUT,
    SL_CAUSE_INTERNAL_ERROR,
    SL_CAUSE__COUNT,
};

/* The six failure categories of DESIGN.md, for doctor and the dashboard. */
enum sl_failure {
    SL_FAILURE_NONE = 0,
    SL_FAILURE_CONNECTIVITY,
    SL_FAILURE_ROUTING,
    SL_FAILURE_AUTH,
    SL_FAILURE_RATE_LIMIT,
    SL_FAILURE_LATENCY,
    SL_FAILURE_RESOURCES,
    SL_FAILURE__COUNT,
};

typedef struct sl_cause_info {
    const char *name; /* "route_not_found" */
    uint16_t status;
    enum sl_failure failure;
    const char *message; /* default sentence for the error body; no secrets, no addresses */
} sl_cause_info_t;

/** Static description of `c`; valid for every enum value. */
const sl_cause_info_t *sl_cause_info(enum sl_cause c);
const char *sl_failure_name(enum sl_failure f);

/** The gRPC status code (grpc/doc/statuscodes.md) a gateway error with cause `c` is reported
 *  as to a gRPC client (docs/grpc.md): UNAVAILABLE for connectivity, DEADLINE_EXCEEDED for
 *  timeouts, UNAUTHENTICATED, PERMISSION_DENIED, UNIMPLEMENTED (no route), RESOURCE_EXHAUSTED
 *  (limits and sizes), INTERNAL otherwise. */
int sl_cause_grpc_status(enum sl_cause c);

#endif
