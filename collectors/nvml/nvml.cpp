#include "collectors/nvml/nvml.hpp"

#include <dlfcn.h>

#include <algorithm>
#include <array>
#include <charconv>
#include <cstring>

namespace tally::collectors {

Result<std::unique_ptr<NvmlLibrary>> NvmlLibrary::open(const std::string& library) {
  // RTLD_LOCAL: the library's symbols stay out of the global namespace, so a fake and a real one never mix.
  void* handle = dlopen(library.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (handle == nullptr) {
    const char* why = dlerror();
    return make_error(ErrorCode::not_found, "NVML library {} cannot be loaded: {}", library,
                      why != nullptr ? why : "unknown dlopen error");
  }
  std::unique_ptr<NvmlLibrary> nvml(new NvmlLibrary(handle, library));
  std::vector<std::string> missing_required;
#define TALLY_NVML_RESOLVE(name, required)                                       \
  nvml->api_.name = reinterpret_cast<decltype(&::name)>(dlsym(handle, #name));   \
  if (nvml->api_.name == nullptr) {                                              \
    (required ? missing_required : nvml->missing_optional_).emplace_back(#name); \
  }
  TALLY_NVML_FUNCTIONS(TALLY_NVML_RESOLVE)
#undef TALLY_NVML_RESOLVE
  if (!missing_required.empty()) {
    // Not initialised: the destructor must not call nvmlShutdown.
    nvml->api_.nvmlShutdown = nullptr;
    std::string names;
    for (const auto& name : missing_required) names += (names.empty() ? "" : ", ") + name;
    return make_error(ErrorCode::unsupported, "NVML library {} lacks required symbol(s) {}", library, names);
  }
  if (const nvmlReturn_t status = nvml->api_.nvmlInit_v2(); status != NVML_SUCCESS) {
    const std::string message = nvml->error_string(status);
    nvml->api_.nvmlShutdown = nullptr;
    return make_error(status == NVML_ERROR_DRIVER_NOT_LOADED ? ErrorCode::not_found : ErrorCode::io,
                      "NVML library {}: nvmlInit_v2 failed: {}", library, message);
  }
  if (nvml->api_.nvmlSystemGetDriverVersion != nullptr) {
    std::array<char, NVML_SYSTEM_DRIVER_VERSION_BUFFER_SIZE> version{};
    if (nvml->api_.nvmlSystemGetDriverVersion(version.data(), version.size()) == NVML_SUCCESS) {
      nvml->driver_version_ = std::string(version.data(), strnlen(version.data(), version.size()));
    }
  }
  return nvml;
}

NvmlLibrary::~NvmlLibrary() {
  if (api_.nvmlShutdown != nullptr) api_.nvmlShutdown();
  dlclose(handle_);
}

bool NvmlLibrary::has(std::string_view symbol) const {
  return std::find(missing_optional_.begin(), missing_optional_.end(), symbol) == missing_optional_.end();
}

std::string NvmlLibrary::error_string(nvmlReturn_t result) const {
  const char* text = api_.nvmlErrorString != nullptr ? api_.nvmlErrorString(result) : nullptr;
  return text != nullptr ? std::string(text) : fmt::format("NVML error {}", static_cast<int>(result));
}

std::size_t nvml_process_info_entry_size(std::string_view driver_version) {
  // "535.54.03" -> {535, 54, 3}
  std::array<unsigned, 3> parts{};
  std::size_t part = 0;
  const char* cursor = driver_version.data();
  const char* end = cursor + driver_version.size();
  while (part < parts.size() && cursor < end) {
    const auto [next, ec] = std::from_chars(cursor, end, parts[part]);
    if (ec != std::errc()) return sizeof(nvmlProcessInfo_t);
    ++part;
    cursor = next < end && *next == '.' ? next + 1 : end;
  }
  if (part < 2) return sizeof(nvmlProcessInfo_t);
  const std::array<unsigned, 3> first{535, 43, 2};
  const std::array<unsigned, 3> last{535, 86, 5};
  if (parts >= first && parts <= last) return sizeof(nvmlProcessInfo_v3_535_t);
  return sizeof(nvmlProcessInfo_t);
}

}  // namespace tally::collectors
