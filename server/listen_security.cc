#include "server/listen_security.h"

#include <grpcpp/security/server_credentials.h>
#include <grpcpp/security/tls_certificate_provider.h>
#include <grpcpp/security/tls_credentials_options.h>

#include <fstream>

namespace spritediff {

namespace {

Status Readable(const char* field, const std::string& path) {
  std::ifstream in(path);
  if (!in) return Status::NotFound(std::string(field) + " " + path + ": cannot read");
  std::string first;
  std::getline(in, first);
  if (first.find("-----BEGIN") == std::string::npos) {
    return Status::InvalidArgument(std::string(field) + " " + path + ": not a PEM file");
  }
  return Status::Ok();
}

}  // namespace

Result<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(const AppConfig& config) {
  if (config.tls_cert_file.empty()) return grpc::InsecureServerCredentials();
  for (const Status& s : {Readable("tls_cert_file", config.tls_cert_file), Readable("tls_key_file", config.tls_key_file),
                          config.tls_client_ca_file.empty() ? Status::Ok()
                                                            : Readable("tls_client_ca_file", config.tls_client_ca_file)}) {
    if (!s.ok()) return s;
  }
  // The watcher re-reads the files every tls_reload_s: renewed certificates take effect
  // without a restart (replace key and certificate together, e.g. by a directory rename).
  auto provider = std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(
      config.tls_key_file, config.tls_cert_file, config.tls_client_ca_file,
      static_cast<unsigned int>(config.tls_reload_s));
  grpc::experimental::TlsServerCredentialsOptions options(provider);
  options.watch_identity_key_cert_pairs();
  if (config.tls_client_ca_file.empty()) {
    options.set_cert_request_type(GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
  } else {
    options.watch_root_certs();
    options.set_cert_request_type(GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  }
  std::shared_ptr<grpc::ServerCredentials> creds = grpc::experimental::TlsServerCredentials(options);
  if (!creds) return Status::InvalidArgument("cannot build TLS credentials from the configured files");
  return creds;
}

void ApplyConnectionPolicy(const AppConfig& config, grpc::ServerBuilder& builder) {
  builder.AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS, config.max_concurrent_streams);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, config.keepalive_time_s * 1000);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, config.keepalive_timeout_s * 1000);
  // Clients may ping no more often than every 10 s; more is treated as abuse (GOAWAY).
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 10000);
  if (config.max_connection_idle_s > 0) {
    builder.AddChannelArgument(GRPC_ARG_MAX_CONNECTION_IDLE_MS, config.max_connection_idle_s * 1000);
  }
}

}  // namespace spritediff
