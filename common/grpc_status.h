// core Status <-> gRPC status, and the names of gRPC codes. A separate target
// (spritediff_grpc_status) so that spritediff_common itself stays free of gRPC: the offline
// commands link common, the daemon and spritectl link this as well.
#pragma once

#include <grpcpp/grpcpp.h>

#include "common/status.h"

namespace spritediff {

// core Status -> gRPC status with the same meaning (kIoError becomes INTERNAL).
grpc::Status ToGrpc(const Status& status);
// The upper-case name of a gRPC code ("INVALID_ARGUMENT"), "ERROR" for one it does not know.
const char* CodeName(grpc::StatusCode code);

}  // namespace spritediff
