#include "common/proto_json.h"

#include <google/protobuf/util/json_util.h>

namespace spritediff {

std::string MessageToJson(const google::protobuf::Message& m) {
  std::string out;
  google::protobuf::util::JsonPrintOptions options;
  options.add_whitespace = true;
  options.preserve_proto_field_names = true;
  if (!google::protobuf::util::MessageToJsonString(m, &out, options).ok()) return std::string();
  return out;
}

}  // namespace spritediff
