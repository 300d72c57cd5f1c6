// C++ exceptions must not cross into Rust: the shims' C functions catch them and hand the message
// back as a malloc'd string, which Rust frees with lejepa_dist_free_string (distributed.cpp).
#pragma once
#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>

#include <c10/util/Exception.h>

namespace lejepa {

// A malloc'd copy for Rust.
inline void copy_string(char** out, const std::string& text) {
  if (out != nullptr) {
    *out = static_cast<char*>(std::malloc(text.size() + 1));
    std::memcpy(*out, text.c_str(), text.size() + 1);
  }
}

// Runs `body`; on an exception writes its message to `error` and returns false.
template <typename F>
bool guarded(char** error, F&& body) {
  try {
    body();
    return true;
  } catch (const c10::Error& e) {
    copy_string(error, e.what_without_backtrace());
  } catch (const std::exception& e) {
    copy_string(error, e.what());
  }
  return false;
}

}  // namespace lejepa
