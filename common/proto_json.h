// A protobuf message as indented JSON with the proto's field names: job.json on the daemon,
// `spritectl train get` on the client. In the spritediff_grpc_status target (protobuf, not torch).
#pragma once

#include <google/protobuf/message.h>

#include <string>

namespace spritediff {

// "" when the message cannot be encoded.
std::string MessageToJson(const google::protobuf::Message& message);

}  // namespace spritediff
