// What every spritectl subcommand shares: the connection flags, dialling the daemon, and
// turning failures into one clear line and a non-zero exit.
#pragma once

#include <CLI/CLI.hpp>
#include <grpcpp/grpcpp.h>

#include <memory>
#include <string>

#include "common/grpc_status.h"

namespace spritectl {

using spritediff::CodeName;

struct Connection {
  std::string server = "127.0.0.1:50051";
  double timeout_s = 120;
  double connect_timeout_s = 5;
  std::string token_file;  // first line: the bearer token (--token-file or SPRITEDIFF_TOKEN_FILE)
  bool tls = false;        // TLS with the system's roots unless tls_ca is given
  std::string tls_ca;      // PEM CA that signed the server's certificate (implies TLS)
  std::string tls_cert;    // PEM client certificate for mutual TLS, with tls_key
  std::string tls_key;
  std::string tls_server_name;  // name to check the server's certificate against (default: the host)
};

// Prints "spritectl: error: <message>" and makes the command exit 1.
[[noreturn]] void Fail(const std::string& message);
[[noreturn]] void FailRpc(const grpc::Status& s, const Connection& c);
// A channel that is connected, or Fail within the connect timeout.
std::shared_ptr<grpc::Channel> Connect(const Connection& c);
// A channel with the connection's credentials (TLS, bearer token on every call), not yet
// connected; args are the caller's channel arguments. Fails on unreadable files.
std::shared_ptr<grpc::Channel> MakeChannel(const Connection& c, const grpc::ChannelArguments& args);
void SetDeadline(grpc::ClientContext& ctx, double seconds);
void AddConnectionOptions(CLI::App* cmd, Connection& c);

}  // namespace spritectl
