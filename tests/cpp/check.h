// A tiny self-contained test harness (no gtest): TEST_CASE registers a
// function, CHECK* macros record failures (one line each) without stopping
// the case, and run_all() prints "N passed, N failed" (counting test cases)
// as its last line and returns the process exit status.
#pragma once
#include <chrono>
#include <cmath>
#include <cstdio>
#include <exception>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

namespace check {

struct Case {
  const char* name;
  std::function<void()> fn;
};

inline std::vector<Case>& registry() {
  static std::vector<Case> cases;
  return cases;
}

inline int& current_failures() {
  static int n = 0;
  return n;
}

inline const char*& current_name() {
  static const char* name = "";
  return name;
}

inline void fail(const char* file, int line, const std::string& what) {
  ++current_failures();
  std::printf("FAIL [%s] %s:%d: %s\n", current_name(), file, line, what.c_str());
  std::fflush(stdout);
}

struct Registrar {
  Registrar(const char* name, std::function<void()> fn) { registry().push_back({name, std::move(fn)}); }
};

// The message of the exception f() throws, or "" when it throws none.
template <typename F>
std::string thrown_message(F&& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

inline std::string num(double v) {
  std::ostringstream os;
  os.precision(10);
  os << v;
  return os.str();
}

// Runs every case whose name contains `filter` (all when empty).
inline int run_all(const std::string& filter, bool verbose) {
  int passed = 0, failed = 0;
  for (const auto& c : registry()) {
    if (!filter.empty() && std::string(c.name).find(filter) == std::string::npos) continue;
    current_name() = c.name;
    current_failures() = 0;
    const auto t0 = std::chrono::steady_clock::now();
    try {
      c.fn();
    } catch (const std::exception& e) {
      fail(__FILE__, __LINE__, std::string("unexpected exception: ") + e.what());
    } catch (...) {
      fail(__FILE__, __LINE__, "unexpected non-std exception");
    }
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (current_failures() == 0) ++passed; else ++failed;
    if (verbose) std::printf("%-4s %-48s %.2f s\n", current_failures() ? "FAIL" : "ok", c.name, s);
  }
  std::printf("%d passed, %d failed\n", passed, failed);
  std::fflush(stdout);
  return failed == 0 ? 0 : 1;
}

}  // namespace check

#define CHECK_CONCAT2(a, b) a##b
#define CHECK_CONCAT(a, b) CHECK_CONCAT2(a, b)
#define TEST_CASE(name)                                                                    \
  static void CHECK_CONCAT(test_fn_, __LINE__)();                                          \
  static ::check::Registrar CHECK_CONCAT(test_reg_, __LINE__)(name, CHECK_CONCAT(test_fn_, __LINE__)); \
  static void CHECK_CONCAT(test_fn_, __LINE__)()

#define PF_CHECK(cond)                                                    \
  do {                                                                 \
    if (!(cond)) ::check::fail(__FILE__, __LINE__, "PF_CHECK(" #cond ")"); \
  } while (0)

#define PF_CHECK_MSG(cond, msg)                                                                      \
  do {                                                                                            \
    if (!(cond)) {                                                                                \
      std::ostringstream check_os_;                                                               \
      check_os_ << "PF_CHECK(" #cond "): " << msg;                                                   \
      ::check::fail(__FILE__, __LINE__, check_os_.str());                                         \
    }                                                                                             \
  } while (0)

// |a - b| <= tol (NaN fails).
#define PF_CHECK_NEAR(a, b, tol)                                                                     \
  do {                                                                                            \
    const double check_a_ = (a), check_b_ = (b), check_t_ = (tol);                                \
    if (!(std::fabs(check_a_ - check_b_) <= check_t_))                                            \
      ::check::fail(__FILE__, __LINE__,                                                           \
                    "PF_CHECK_NEAR(" #a ", " #b "): " + ::check::num(check_a_) + " vs " +            \
                        ::check::num(check_b_) + " (tol " + ::check::num(check_t_) + ")");       \
  } while (0)

#define PF_CHECK_LE(a, b)                                                                            \
  do {                                                                                            \
    const double check_a_ = (a), check_b_ = (b);                                                  \
    if (!(check_a_ <= check_b_))                                                                  \
      ::check::fail(__FILE__, __LINE__,                                                           \
                    "PF_CHECK_LE(" #a ", " #b "): " + ::check::num(check_a_) + " > " + ::check::num(check_b_)); \
  } while (0)

// expr must throw `type`; `pred(const type& e)` (optional: pass [](auto&){return true;}) must hold.
#define PF_CHECK_THROWS_AS(expr, type)                                                               \
  do {                                                                                            \
    bool check_thrown_ = false;                                                                   \
    try {                                                                                         \
      (void)(expr);                                                                               \
    } catch (const type&) {                                                                       \
      check_thrown_ = true;                                                                       \
    } catch (const std::exception& check_e_) {                                                    \
      ::check::fail(__FILE__, __LINE__, std::string(#expr " threw another exception: ") + check_e_.what()); \
      check_thrown_ = true;                                                                       \
    }                                                                                             \
    if (!check_thrown_) ::check::fail(__FILE__, __LINE__, #expr " did not throw " #type);         \
  } while (0)
