// tb_main.cpp -- C simulation / C-RTL co-simulation test bench of the mmfree HLS kernels.
//
//   tb_main VECTOR_DIR TOP      (Vitis: csim_design -argv "VECTOR_DIR TOP", cosim_design -argv ...)
//
// Reads the inputs and the expected outputs of one top-level kernel from VECTOR_DIR/TOP/ (raw little-endian
// arrays NAME.bin and a scalars.txt of "name value" lines, written by `mmfree hls synth` from the
// integer reference), calls the kernel once and compares every output exactly. Prints PASS or the first
// mismatches and returns 0 only when everything matches (what Vitis needs from a test bench).
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "mmfree_hls.h"

namespace {

std::string g_dir;
int g_fail = 0;

template <typename T>
std::vector<T> load(const std::string &name) {
  const std::string path = g_dir + "/" + name + ".bin";
  std::ifstream f(path.c_str(), std::ios::binary);
  if (!f) {
    std::fprintf(stderr, "tb: cannot open %s\n", path.c_str());
    std::exit(2);
  }
  std::vector<char> raw((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  if (raw.size() % sizeof(T) != 0) {
    std::fprintf(stderr, "tb: %s has %zu bytes, not a multiple of %zu\n", path.c_str(), raw.size(), sizeof(T));
    std::exit(2);
  }
  std::vector<T> out(raw.size() / sizeof(T));
  if (!out.empty()) std::memcpy(&out[0], &raw[0], raw.size());
  return out;
}

std::map<std::string, long long> load_scalars() {
  std::map<std::string, long long> s;
  const std::string path = g_dir + "/scalars.txt";
  std::ifstream f(path.c_str());
  if (!f) {
    std::fprintf(stderr, "tb: cannot open %s\n", path.c_str());
    std::exit(2);
  }
  std::string key;
  long long v;
  while (f >> key >> v) s[key] = v;
  return s;
}

long long sc(std::map<std::string, long long> &s, const char *key) {
  if (!s.count(key)) {
    std::fprintf(stderr, "tb: scalars.txt has no %s\n", key);
    std::exit(2);
  }
  return s[key];
}

template <typename A, typename B>
void expect_eq(const char *what, const std::vector<A> &got, const std::vector<B> &want) {
  if (got.size() != want.size()) {
    std::printf("FAIL %s: %zu values, expected %zu\n", what, got.size(), want.size());
    ++g_fail;
    return;
  }
  int shown = 0, bad = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    if ((long long)got[i] != (long long)want[i]) {
      ++bad;
      if (shown++ < 5)
        std::printf("FAIL %s[%zu]: hls %lld, reference %lld\n", what, i, (long long)got[i], (long long)want[i]);
    }
  }
  if (bad) {
    std::printf("FAIL %s: %d of %zu values differ\n", what, bad, got.size());
    ++g_fail;
  } else {
    std::printf("ok   %s: %zu values\n", what, got.size());
  }
}

void expect_scalar(const char *what, long long got, long long want) {
  std::vector<long long> g(1, got), w(1, want);
  expect_eq(what, g, w);
}

int check_status(const char *top, int rc) {
  if (rc != MMFREE_OK) {
    std::printf("FAIL %s returned status %d\n", top, rc);
    ++g_fail;
  }
  return rc;
}

void tb_matvec() {
  std::map<std::string, long long> s = load_scalars();
  const int n = (int)sc(s, "n"), k = (int)sc(s, "k");
  std::vector<uint8_t> w = load<uint8_t>("w");
  std::vector<int8_t> codes = load<int8_t>("codes");
  hls::stream<int8_t> cs("codes");
  hls::stream<int32_t> as("acc");
  for (int i = 0; i < k; ++i) cs.write(codes[i]);
  if (check_status("mmfree_ternary_matvec", mmfree_ternary_matvec(&w[0], cs, as, n, k))) return;
  std::vector<int32_t> acc;
  while (!as.empty()) acc.push_back(as.read());
  expect_eq("acc", acc, load<int32_t>("expect_acc"));
}

void tb_quantize() {
  std::map<std::string, long long> s = load_scalars();
  const int k = (int)sc(s, "k");
  std::vector<int64_t> u = load<int64_t>("u");
  std::vector<mmfree_vec_t> n = load<mmfree_vec_t>("n"), nw = load<mmfree_vec_t>("nw");
  hls::stream<int64_t> us("u");
  hls::stream<int8_t> cs("codes");
  for (int i = 0; i < k; ++i) us.write(u[i]);
  int64_t P = -1, S = -1;
  int32_t sz = -1;
  if (check_status("mmfree_rmsnorm_quantize", mmfree_rmsnorm_quantize(us, &n[0], &nw[0], cs, &P, &S, &sz, k)))
    return;
  std::vector<int8_t> codes;
  while (!cs.empty()) codes.push_back(cs.read());
  expect_eq("codes", codes, load<int8_t>("expect_codes"));
  expect_scalar("P", P, sc(s, "expect_P"));
  expect_scalar("S", S, sc(s, "expect_S"));
  expect_scalar("sz", sz, sc(s, "expect_sz"));
}

void tb_dequantize() {
  std::map<std::string, long long> s = load_scalars();
  const int n = (int)sc(s, "n");
  std::vector<int32_t> acc = load<int32_t>("acc");
  hls::stream<int32_t> as("acc"), ys("y");
  for (int i = 0; i < n; ++i) as.write(acc[i]);
  int32_t M = -1, shift = -1;
  if (check_status("mmfree_dequantize", mmfree_dequantize(as, ys, sc(s, "P"), sc(s, "S"), (int32_t)sc(s, "sz"),
                                                          (int32_t)sc(s, "c_m"), (int32_t)sc(s, "c_e"), &M, &shift,
                                                          n)))
    return;
  std::vector<int32_t> y;
  while (!ys.empty()) y.push_back(ys.read());
  expect_eq("y", y, load<int32_t>("expect_y"));
  expect_scalar("M", M, sc(s, "expect_M"));
  expect_scalar("shift", shift, sc(s, "expect_shift"));
}

void tb_mlgru() {
  std::map<std::string, long long> s = load_scalars();
  const int d = (int)sc(s, "d");
  std::vector<int32_t> i = load<int32_t>("i"), f = load<int32_t>("f"), g = load<int32_t>("g");
  std::vector<mmfree_gate_t> olb = load<mmfree_gate_t>("one_minus_lb");
  std::vector<int32_t> h = load<int32_t>("h");
  hls::stream<int32_t> is("i"), fs("f"), gs("g");
  hls::stream<int64_t> us("u");
  for (int j = 0; j < d; ++j) {
    is.write(i[j]);
    fs.write(f[j]);
    gs.write(g[j]);
  }
  if (check_status("mmfree_mlgru", mmfree_mlgru(is, fs, gs, &olb[0], &h[0], us, (int)sc(s, "act_frac"), d))) return;
  std::vector<int64_t> u;
  while (!us.empty()) u.push_back(us.read());
  expect_eq("h", h, load<int32_t>("expect_h"));
  expect_eq("u", u, load<int64_t>("expect_u"));
}

void tb_bitlinear() {
  std::map<std::string, long long> s = load_scalars();
  const int k = (int)sc(s, "k"), n = (int)sc(s, "n");
  std::vector<uint8_t> image = load<uint8_t>("image");
  std::vector<int64_t> u = load<int64_t>("u");
  std::vector<int32_t> y(n, 0);
  if (check_status("mmfree_bitlinear",
                   mmfree_bitlinear(&image[0], (uint32_t)sc(s, "off_n"), (uint32_t)sc(s, "off_nw"),
                                    (uint32_t)sc(s, "off_w"), (int32_t)sc(s, "c_m"), (int32_t)sc(s, "c_e"), &u[0],
                                    &y[0], k, n)))
    return;
  expect_eq("y", y, load<int32_t>("expect_y"));
}

void tb_layer() {
  std::map<std::string, long long> s = load_scalars();
  const int d = (int)sc(s, "d"), inter = (int)sc(s, "inter");
  std::vector<uint8_t> image = load<uint8_t>("image");
  std::vector<uint32_t> offs = load<uint32_t>("offsets");
  std::vector<int32_t> consts = load<int32_t>("consts");
  std::vector<int32_t> x = load<int32_t>("x"), h = load<int32_t>("h");
  std::vector<int32_t> want_taps = load<int32_t>("expect_taps");
  std::vector<int32_t> taps(want_taps.size(), 0);
  if (offs.size() != MMFREE_LT_COUNT || consts.size() != 2 * MMFREE_LB_COUNT) {
    std::printf("FAIL layer descriptor sizes %zu/%zu do not match this build (%d/%d)\n", offs.size(),
                consts.size(), MMFREE_LT_COUNT, 2 * MMFREE_LB_COUNT);
    ++g_fail;
    return;
  }
  if (check_status("mmfree_layer", mmfree_layer(&image[0], &offs[0], &consts[0], &x[0], &h[0], &taps[0], 1,
                                                (int)sc(s, "act_frac"), d, inter)))
    return;
  expect_eq("x", x, load<int32_t>("expect_x"));
  expect_eq("h", h, load<int32_t>("expect_h"));
  expect_eq("taps", taps, want_taps);
}

}  // namespace

int main(int argc, char **argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s VECTOR_DIR TOP\n", argv[0]);
    return 2;
  }
  const std::string top = argv[2];
  g_dir = std::string(argv[1]) + "/" + top;
  if (top == "mmfree_ternary_matvec") tb_matvec();
  else if (top == "mmfree_rmsnorm_quantize") tb_quantize();
  else if (top == "mmfree_dequantize") tb_dequantize();
  else if (top == "mmfree_mlgru") tb_mlgru();
  else if (top == "mmfree_bitlinear") tb_bitlinear();
  else if (top == "mmfree_layer") tb_layer();
  else {
    std::fprintf(stderr, "tb: unknown top %s\n", top.c_str());
    return 2;
  }
  std::printf("%s %s\n", g_fail ? "FAIL" : "PASS", top.c_str());
  return g_fail ? 1 : 0;
}
