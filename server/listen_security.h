// How the gRPC port listens: credentials (plain, TLS, or mutual TLS with certificates reloaded
// on SIGHUP and when their files change) and the per-connection policy (concurrent streams,
// keepalive, idle connections), both from the config.
#pragma once

#include <grpcpp/grpcpp.h>

#include <memory>
#include <string>

#include "common/status.h"
#include "common/config.h"

namespace spritediff {

// The TLS files the listener serves. gRPC's file watcher reads private copies of them (a 0700
// directory under TMPDIR, removed with this object) every second. The configured files are
// copied there at start and by Reload(), each time only after checking that they parse and
// that the key belongs to the certificate: a bad renewal keeps the certificate in use and
// says why, instead of failing every handshake.
class TlsFiles {
 public:
  static Result<std::unique_ptr<TlsFiles>> Stage(const AppConfig& config);
  ~TlsFiles();
  TlsFiles(const TlsFiles&) = delete;
  TlsFiles& operator=(const TlsFiles&) = delete;

  // Reads the configured files again (SIGHUP, and every tls_reload_s). true: they changed and
  // the new ones are staged (served to new handshakes within about a second); false: unchanged;
  // an error: they are unreadable or inconsistent, and the staged ones stay in use.
  Result<bool> Reload();

  std::shared_ptr<grpc::ServerCredentials> credentials() const { return credentials_; }

 private:
  struct Contents {
    std::string key, cert, ca;
    bool operator==(const Contents& o) const { return key == o.key && cert == o.cert && ca == o.ca; }
  };
  TlsFiles(AppConfig config, std::string dir) : config_(std::move(config)), dir_(std::move(dir)) {}
  Result<Contents> ReadChecked() const;
  Status Publish(const Contents& c);  // a new generation directory, then the `current` link swapped to it

  const AppConfig config_;
  const std::string dir_;
  Contents staged_;
  int generation_ = 0;
  std::shared_ptr<grpc::ServerCredentials> credentials_;
};

// What the listener uses: plain credentials without tls_cert_file (files is then null), TLS
// otherwise. Unreadable or inconsistent files are a start-up error, not failing handshakes.
struct ServerCredentials {
  std::shared_ptr<grpc::ServerCredentials> credentials;
  std::unique_ptr<TlsFiles> files;
};
Result<ServerCredentials> MakeServerCredentials(const AppConfig& config);

// max_concurrent_streams, keepalive_time_s/keepalive_timeout_s and max_connection_idle_s.
void ApplyConnectionPolicy(const AppConfig& config, grpc::ServerBuilder& builder);

}  // namespace spritediff
