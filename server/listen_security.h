// How the gRPC port listens: credentials (plain, TLS, or mutual TLS with certificates re-read
// when their files change) and the per-connection policy (concurrent streams, keepalive,
// idle connections), both from the config.
#pragma once

#include <grpcpp/grpcpp.h>

#include <memory>

#include "common/status.h"
#include "common/config.h"

namespace spritediff {

// Insecure credentials without tls_cert_file; TLS otherwise. The files are checked to be
// readable here, so a typo is a start-up error rather than failing handshakes.
Result<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(const AppConfig& config);

// max_concurrent_streams, keepalive_time_s/keepalive_timeout_s and max_connection_idle_s.
void ApplyConnectionPolicy(const AppConfig& config, grpc::ServerBuilder& builder);

}  // namespace spritediff
