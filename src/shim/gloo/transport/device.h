// See README.md: only parsed, never used (held through smart pointers only).
#pragma once

namespace gloo {
namespace transport {
class Device;
class UnboundBuffer;
} // namespace transport
} // namespace gloo
