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
};

// Prints "spritectl: error: <message>" and makes the command exit 1.
[[noreturn]] void Fail(const std::string& message);
[[noreturn]] void FailRpc(const grpc::Status& s, const Connection& c);
// A channel that is connected, or Fail within the connect timeout.
std::shared_ptr<grpc::Channel> Connect(const Connection& c);
void SetDeadline(grpc::ClientContext& ctx, double seconds);
void AddConnectionOptions(CLI::App* cmd, Connection& c);

}  // namespace spritectl
