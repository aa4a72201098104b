// pybind11 entry point of fastgru4rec._native. No torch and no CUDA here: numpy buffers only.
//
// Every argument is checked here before any native work starts, and bad ones raise ValueError
// (std::invalid_argument) with what is wrong; the heavy work runs with the GIL released.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdlib>
#include <functional>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "optim.hpp"
#include "sampler.hpp"
#include "schedule.hpp"
#include "stream.hpp"

namespace py = pybind11;
using namespace fg4r;

namespace {

std::string describe(const py::handle& obj) {
  if (py::isinstance<py::array>(obj)) {
    py::array a = py::reinterpret_borrow<py::array>(obj);
    return "dtype=" + py::str(a.dtype()).cast<std::string>() + ", shape=" + py::str(obj.attr("shape")).cast<std::string>();
  }
  return "type " + py::str(py::type::of(obj).attr("__name__")).cast<std::string>();
}

// A C-contiguous numpy array of dtype T (1-d unless any_ndim), else ValueError naming `what`.
template <class T>
py::array_t<T> checked_array(const py::handle& obj, const std::string& what, bool writable, bool any_ndim = false) {
  // the dtype's name only on failure: str(dtype) is a Python call (numpy's __str__), and the
  // training step calls the row optimizer twice a step with five arrays each
  if (!py::isinstance<py::array_t<T>>(obj))
    throw std::invalid_argument(what + " must be a numpy " +
                                py::str(py::dtype::of<T>()).cast<std::string>() + " array (got " +
                                describe(obj) + ")");
  py::array_t<T> a = py::reinterpret_borrow<py::array_t<T>>(obj);
  if (!any_ndim && a.ndim() != 1)
    throw std::invalid_argument(what + " must be 1-d (got " + describe(obj) + ")");
  if (!(a.flags() & py::array::c_style))
    throw std::invalid_argument(what + " must be C-contiguous (use numpy.ascontiguousarray)");
  if (writable && !a.writeable()) throw std::invalid_argument(what + " must be writable");
  return a;
}

template <class T>
py::array_t<T> from_malloc(std::unique_ptr<T, FreeDeleter> p, int64_t n) {
  T* raw = p.release();
  py::capsule owner(raw, [](void* q) { std::free(q); });
  return py::array_t<T>({static_cast<py::ssize_t>(n)}, {static_cast<py::ssize_t>(sizeof(T))}, raw, owner);
}

template <class T>
py::array_t<T> from_vector(std::vector<T>&& v) {
  auto* h = new std::vector<T>(std::move(v));
  py::capsule owner(h, [](void* q) { delete static_cast<std::vector<T>*>(q); });
  return py::array_t<T>({static_cast<py::ssize_t>(h->size())}, {static_cast<py::ssize_t>(sizeof(T))}, h->data(), owner);
}

// Shrinks a malloc'd event array to n entries (only the min_lanes cut leaves it short).
template <class T>
void shrink(std::unique_ptr<T, FreeDeleter>& p, int64_t cap, int64_t n) {
  if (n >= cap - cap / 16) return;  // not worth a copy
  void* q = std::realloc(p.get(), static_cast<size_t>(std::max<int64_t>(n, 1)) * sizeof(T));
  if (q) {
    (void)p.release();
    p.reset(static_cast<T*>(q));
  }
}

void check_lanes(int64_t batch_size, int64_t min_lanes) {
  if (batch_size <= 0) throw std::invalid_argument("batch_size must be positive (got " + std::to_string(batch_size) + ")");
  if (batch_size > std::numeric_limits<int32_t>::max())
    throw std::invalid_argument("batch_size must fit int32 (got " + std::to_string(batch_size) + ")");
  if (min_lanes < 0) throw std::invalid_argument("min_lanes must be >= 0 (got " + std::to_string(min_lanes) + ")");
}

// Validated inputs of a schedule: the session index and the items array (int32 or int64).
struct ScheduleInput {
  SessionIndex idx;
  py::array items;  // keeps the items alive
  bool items64;
  const void* items_ptr;
};

ScheduleInput schedule_input(const py::object& offsets, const py::object& items, const py::object& order,
                             int64_t n_items, bool copy) {
  auto off = checked_array<int64_t>(offsets, "session offsets", false);
  ScheduleInput in;
  if (py::isinstance<py::array_t<int64_t>>(items)) {
    in.items = checked_array<int64_t>(items, "session items", false);
    in.items64 = true;
  } else if (py::isinstance<py::array_t<int32_t>>(items)) {
    in.items = checked_array<int32_t>(items, "session items", false);
    in.items64 = false;
  } else {
    throw std::invalid_argument("session items must be a numpy int32 or int64 array (got " + describe(items) + ")");
  }
  in.items_ptr = in.items.data();
  py::array_t<int64_t> ord;
  const int64_t* ord_ptr = nullptr;
  int64_t n_order = 0;
  if (!order.is_none()) {
    ord = checked_array<int64_t>(order, "session order", false);
    ord_ptr = ord.data();
    n_order = ord.shape(0);
  }
  const int64_t n_events = in.items.shape(0);
  const int64_t* off_ptr = off.data();
  const int64_t n_off = off.shape(0);
  {
    py::gil_scoped_release nogil;  // O(S + n_events) checks
    in.idx = make_session_index(off_ptr, n_off, n_events, ord_ptr, n_order, copy);
    if (in.items64)
      check_items(static_cast<const int64_t*>(in.items_ptr), n_events, n_items);
    else
      check_items(static_cast<const int32_t*>(in.items_ptr), n_events, n_items);
  }
  return in;
}

template <class Item>
EpochSink run_epoch(const SessionIndex& idx, const Item* items, int64_t batch_size, int64_t min_lanes) {
  // Steps: at full width until sessions run out (<= pairs / lanes), then the last sessions
  // finish (< max_len more steps). Only a sizing hint: the per-step arrays grow if it is short.
  const int64_t lanes = std::max<int64_t>(1, std::min(batch_size, idx.size()));
  EpochSink sink(idx.n_pairs_max, idx.n_pairs_max / lanes + idx.max_len + 1);
  ScheduleGen<Item> gen(idx, items, batch_size, min_lanes);
  gen.run(sink);
  return sink;
}

py::tuple epoch_schedule(const py::object& offsets, const py::object& items, int64_t batch_size, int64_t min_lanes,
                         const py::object& order, int64_t n_items) {
  check_lanes(batch_size, min_lanes);
  ScheduleInput in = schedule_input(offsets, items, order, n_items, false);
  std::unique_ptr<EpochSink> sink;
  {
    py::gil_scoped_release nogil;
    sink.reset(new EpochSink(
        in.items64 ? run_epoch(in.idx, static_cast<const int64_t*>(in.items_ptr), batch_size, min_lanes)
                   : run_epoch(in.idx, static_cast<const int32_t*>(in.items_ptr), batch_size, min_lanes)));
    shrink(sink->inputs, sink->cap, sink->n_events);
    shrink(sink->targets, sink->cap, sink->n_events);
    shrink(sink->reset, sink->cap, sink->n_events);
    sink->width.shrink_to_fit();
    sink->step_offsets.shrink_to_fit();
    sink->keep_offsets.shrink_to_fit();
  }
  const int64_t n = sink->n_events;
  return py::make_tuple(from_vector(std::move(sink->width)), from_vector(std::move(sink->step_offsets)),
                        from_malloc(std::move(sink->inputs), n), from_malloc(std::move(sink->targets), n),
                        from_malloc(std::move(sink->reset), n), from_vector(std::move(sink->keep_offsets)),
                        from_vector(std::move(sink->keep)));
}

// The Python face of ScheduleStream: holds the caller's arrays alive while the producer
// thread writes into them.
struct PyStream {
  py::array items;
  std::vector<py::object> buffers;
  int64_t lanes = 0, chunk_steps = 0;
  std::unique_ptr<ScheduleStream> stream;  // last member: destroyed (thread joined) first

  ScheduleStream& get() { return *stream; }  // set by make_stream, reset only with self
};

const char* const SLOT_KEYS[] = {"inputs", "targets", "reset", "width", "step_offsets", "keep_offsets", "keep"};

std::unique_ptr<PyStream> make_stream(const py::object& offsets, const py::object& items, int64_t batch_size,
                                      int64_t min_lanes, int64_t chunk_steps, const py::list& slots,
                                      const py::object& order, int64_t n_items) {
  check_lanes(batch_size, min_lanes);
  if (chunk_steps <= 0 || chunk_steps > std::numeric_limits<int32_t>::max())
    throw std::invalid_argument("chunk_steps must be in [1, 2^31) (got " + std::to_string(chunk_steps) + ")");
  if (py::len(slots) < 1) throw std::invalid_argument("a schedule stream needs at least one buffer slot");
  ScheduleInput in = schedule_input(offsets, items, order, n_items, true);
  auto ps = std::make_unique<PyStream>();
  ps->items = in.items;
  ps->lanes = std::min(batch_size, in.idx.size());
  ps->chunk_steps = chunk_steps;
  const int64_t need_events = chunk_steps * ps->lanes;  // < 2^62: both factors < 2^31
  const int64_t need_keep = ps->lanes;                  // one shrink step's keep list
  std::vector<ChunkBuffers> bufs;
  for (size_t k = 0; k < py::len(slots); ++k) {
    py::handle slot = slots[k];
    const std::string name = "stream slot " + std::to_string(k);
    if (!py::isinstance<py::dict>(slot)) throw std::invalid_argument(name + " must be a dict of numpy arrays");
    py::dict d = py::reinterpret_borrow<py::dict>(slot);
    for (const char* key : SLOT_KEYS)
      if (!d.contains(key)) throw std::invalid_argument(name + " lacks the buffer '" + key + "'");
    auto need = [&](const py::array& a, const char* key, int64_t n) {
      if (a.shape(0) < n)
        throw std::invalid_argument(name + " buffer '" + key + "' holds " + std::to_string(a.shape(0)) +
                                    " entries; chunk_steps=" + std::to_string(chunk_steps) + " x lanes=" +
                                    std::to_string(ps->lanes) + " needs " + std::to_string(n));
    };
    auto inputs = checked_array<int32_t>(d["inputs"], name + " 'inputs'", true);
    auto targets = checked_array<int32_t>(d["targets"], name + " 'targets'", true);
    auto reset = checked_array<uint8_t>(d["reset"], name + " 'reset'", true);
    auto width = checked_array<int32_t>(d["width"], name + " 'width'", true);
    auto step_off = checked_array<int64_t>(d["step_offsets"], name + " 'step_offsets'", true);
    auto keep_off = checked_array<int64_t>(d["keep_offsets"], name + " 'keep_offsets'", true);
    auto keep = checked_array<int32_t>(d["keep"], name + " 'keep'", true);
    need(inputs, "inputs", need_events);
    need(targets, "targets", need_events);
    need(reset, "reset", need_events);
    need(width, "width", chunk_steps);
    need(step_off, "step_offsets", chunk_steps + 1);
    need(keep_off, "keep_offsets", chunk_steps + 1);
    need(keep, "keep", need_keep);
    bufs.push_back(ChunkBuffers{inputs.mutable_data(), targets.mutable_data(), reset.mutable_data(),
                                std::min<int64_t>(inputs.shape(0), std::min(targets.shape(0), reset.shape(0))),
                                width.mutable_data(), step_off.mutable_data(), keep_off.mutable_data(), chunk_steps,
                                keep.mutable_data(), keep.shape(0)});
    for (py::array a : {py::array(inputs), py::array(targets), py::array(reset), py::array(width),
                        py::array(step_off), py::array(keep_off), py::array(keep)})
      ps->buffers.push_back(a);
  }
  std::unique_ptr<ChunkSource> src;
  if (in.items64)
    src.reset(new GenSource<int64_t>(std::move(in.idx), static_cast<const int64_t*>(in.items_ptr), batch_size, min_lanes));
  else
    src.reset(new GenSource<int32_t>(std::move(in.idx), static_cast<const int32_t*>(in.items_ptr), batch_size, min_lanes));
  ps->stream = std::make_unique<ScheduleStream>(std::move(src), std::move(bufs));
  return ps;
}

// adagrad_momentum_rows / _scatter(table, acc, vel or None, rows, grad, lr, momentum, eps):
// float32 or float64 C-contiguous arrays; table / acc / vel of one shape (N, ...) and dtype;
// grad (len(rows), ...) with the table's row shape; rows int64 in [0, N), unique unless repeats
// (then the gradients of equal ids are summed first: adagrad_momentum_scatter).
//
// One table's update, checked and ready to run without the GIL. Checking is split from running
// so that a call updating two tables (the item table and its bias, each its own dtype) checks
// both before it writes either: a bad bias must not leave the item table half-trained.
struct RowUpdate {
  std::vector<py::array> keep;  // owns the buffers; destroyed in the caller's scope (GIL held)
  std::function<void()> run;    // raw pointers only: safe with the GIL released
};

template <class T>
RowUpdate prepare_rows_typed(py::handle table_o, py::handle acc_o, py::handle vel_o, py::handle rows_o,
                             py::handle grad_o, double lr, double momentum, double eps, bool repeats,
                             const std::string& what) {
  auto table = checked_array<T>(table_o, what + "table", true, true);
  auto acc = checked_array<T>(acc_o, what + "acc", true, true);
  auto rows = checked_array<int64_t>(rows_o, what + "rows", false);
  auto grad = checked_array<T>(grad_o, what + "grad", false, true);
  if (table.ndim() < 1) throw std::invalid_argument(what + "table must have at least one dimension");
  const int64_t n = table.shape(0);
  const int64_t width = n > 0 ? table.size() / n : 0;
  auto same_shape = [&](const py::array& a, const std::string& name) {
    if (a.ndim() != table.ndim()) throw std::invalid_argument(name + " must have the table's shape");
    for (py::ssize_t d = 0; d < a.ndim(); ++d)
      if (a.shape(d) != table.shape(d)) throw std::invalid_argument(name + " must have the table's shape");
  };
  same_shape(acc, what + "acc");
  T* vel_ptr = nullptr;
  RowUpdate u;
  if (!vel_o.is_none()) {
    auto vel = checked_array<T>(vel_o, what + "vel", true, true);
    same_shape(vel, what + "vel");
    vel_ptr = vel.mutable_data();
    u.keep.push_back(vel);
  }
  const int64_t n_rows = rows.shape(0);
  bool grad_ok = grad.ndim() == table.ndim() && grad.shape(0) == n_rows;
  for (py::ssize_t d = 1; grad_ok && d < grad.ndim(); ++d) grad_ok = grad.shape(d) == table.shape(d);
  if (!grad_ok)
    throw std::invalid_argument(what + "grad must have one row of the table's shape per row id (got " +
                                describe(grad_o) + " for " + std::to_string(n_rows) + " rows)");
  const int64_t* r = rows.data();
  for (int64_t i = 0; i < n_rows; ++i)
    if (r[i] < 0 || r[i] >= n)
      throw std::invalid_argument(what + "row id " + std::to_string(r[i]) + " is out of range [0, " +
                                  std::to_string(n) + ")");
  T* t = table.mutable_data();
  T* a = acc.mutable_data();
  const T* g = grad.data();
  const T tl = static_cast<T>(lr), tm = static_cast<T>(momentum), te = static_cast<T>(eps);
  u.keep.insert(u.keep.end(), {py::array(table), py::array(acc), py::array(rows), py::array(grad)});
  if (repeats)
    u.run = [=] { adagrad_momentum_scatter<T>(t, a, vel_ptr, r, n_rows, g, width, tl, tm, te); };
  else
    u.run = [=] { adagrad_momentum_rows<T>(t, a, vel_ptr, r, n_rows, g, width, tl, tm, te); };
  return u;
}

RowUpdate prepare_rows(py::handle table, py::handle acc, py::handle vel, py::handle rows, py::handle grad,
                       double lr, double momentum, double eps, bool repeats, const std::string& what) {
  if (py::isinstance<py::array_t<float>>(table))
    return prepare_rows_typed<float>(table, acc, vel, rows, grad, lr, momentum, eps, repeats, what);
  if (py::isinstance<py::array_t<double>>(table))
    return prepare_rows_typed<double>(table, acc, vel, rows, grad, lr, momentum, eps, repeats, what);
  throw std::invalid_argument(what + "table must be a float32 or float64 numpy array (got " +
                              describe(table) + ")");
}

void adagrad_rows(py::handle table, py::handle acc, py::handle vel, py::handle rows,
                  py::handle grad, double lr, double momentum, double eps) {
  RowUpdate u = prepare_rows(table, acc, vel, rows, grad, lr, momentum, eps, false, "");
  py::gil_scoped_release release;
  u.run();
}

// bias: None or (bias_table, bias_acc, bias_vel or None, bias_ids, bias_grad), the item bias
// updated in the same call (the training step's columns): both tables are checked first.
void adagrad_scatter(py::handle table, py::handle acc, py::handle vel, py::handle ids,
                     py::handle grad, double lr, double momentum, double eps, py::handle bias) {
  RowUpdate u = prepare_rows(table, acc, vel, ids, grad, lr, momentum, eps, true, "");
  RowUpdate ub;
  if (!bias.is_none()) {
    if (!py::isinstance<py::tuple>(bias) || py::len(bias) != 5)
      throw std::invalid_argument("bias must be None or a tuple (table, acc, vel, ids, grad) (got " +
                                  describe(bias) + ")");
    py::tuple b = py::reinterpret_borrow<py::tuple>(bias);
    ub = prepare_rows(b[0], b[1], b[2], b[3], b[4], lr, momentum, eps, true, "bias ");
  }
  py::gil_scoped_release release;
  u.run();
  if (ub.run) ub.run();
}

}  // namespace

PYBIND11_MODULE(_native, m) {
  m.doc() = "fastgru4rec native code (session batcher, negative sampler, sparse optimizer)";
  m.attr("abi_version") = 4;

  m.def("adagrad_momentum_rows", &adagrad_rows, py::arg("table"), py::arg("acc"), py::arg("vel"),
        py::arg("rows"), py::arg("grad"), py::arg("lr"), py::arg("momentum"), py::arg("eps"),
        R"doc(Sparse Adagrad with momentum on the listed (unique) rows, in place, one pass per row.

table, acc, vel (or None): float32/float64 C-contiguous arrays of one shape (N, ...); rows int64
(U,) in [0, N); grad (U, ...) one gradient row per id. acc += g*g; v = momentum*v -
lr*g/sqrt(acc + eps); table += v (without vel: table -= lr*g/sqrt(acc + eps)).)doc");

  m.def("adagrad_momentum_scatter", &adagrad_scatter, py::arg("table"), py::arg("acc"),
        py::arg("vel"), py::arg("ids"), py::arg("grad"), py::arg("lr"), py::arg("momentum"),
        py::arg("eps"), py::arg("bias") = py::none(),
        R"doc(adagrad_momentum_rows for ids that may repeat, in place: grad (L, ...) holds one row per
id occurrence; the rows of equal ids are summed (in occurrence order), then each touched row is
updated once. bias: None or (bias_table, bias_acc, bias_vel or None, bias_ids, bias_grad), a
second table (its own dtype) updated the same way in the same call; every array of both tables
is checked before either is written.)doc");

  m.def("epoch_schedule", &epoch_schedule, py::arg("offsets"), py::arg("items"), py::arg("batch_size"),
        py::arg("min_lanes") = 1, py::arg("order") = py::none(), py::arg("n_items") = -1,
        R"doc(One epoch's session-parallel schedule (REFERENCE §2) as flat arrays.

offsets: int64 (S+1,) CSR offsets; items: int32/int64 (n_events,) item indices; order: None or
int64 (S,) permutation (session k of the epoch is session order[k]); n_items: -1 or the item
count (ids are checked against it). Returns (width int32 (T,), step_offsets int64 (T+1,),
inputs int32 (E,), targets int32 (E,), reset uint8 (E,), keep_offsets int64 (T+1,), keep int32).)doc");

  py::class_<PyStream>(m, "ScheduleStream", R"doc(Chunked schedule written ahead by a background thread.

ScheduleStream(offsets, items, batch_size, min_lanes, chunk_steps, slots, order=None, n_items=-1):
slots is a list of dicts with writable C-contiguous 1-d arrays 'inputs', 'targets' (int32),
'reset' (uint8) of >= chunk_steps*lanes entries, 'width' (int32, >= chunk_steps),
'step_offsets', 'keep_offsets' (int64, >= chunk_steps+1) and 'keep' (int32, >= lanes), where
lanes = min(batch_size, n_sessions). acquire() -> (slot, n_steps, n_events, n_keep) or None at
the end of the epoch; release(slot) hands the slot back.)doc")
      .def(py::init(&make_stream), py::arg("offsets"), py::arg("items"), py::arg("batch_size"),
           py::arg("min_lanes"), py::arg("chunk_steps"), py::arg("slots"), py::arg("order") = py::none(),
           py::arg("n_items") = -1)
      .def("acquire",
           [](PyStream& self) -> py::object {
             ScheduleStream& s = self.get();
             ChunkInfo info{};
             bool ok;
             {
               py::gil_scoped_release nogil;
               ok = s.acquire(&info);
             }
             if (!ok) return py::none();
             return py::make_tuple(info.slot, info.n_steps, info.n_events, info.n_keep);
           })
      .def("release", [](PyStream& self, int64_t slot) { self.get().release(slot); }, py::arg("slot"))
      .def("close",
           [](PyStream& self) {
             // Stops and joins the producer but keeps the object: another Python thread may
             // still be inside acquire() (it wakes up and raises "closed"). Freed with self.
             py::gil_scoped_release nogil;
             self.get().close();
           })
      .def_readonly("lanes", &PyStream::lanes)
      .def_readonly("chunk_steps", &PyStream::chunk_steps)
      .def_property_readonly("n_slots", [](PyStream& self) { return self.get().n_slots(); })
      .def("stats", [](PyStream& self) {
        StreamStats st = self.get().stats();
        py::dict d;
        d["chunks"] = st.chunks;
        d["waits"] = st.waits;
        d["waits_after_first"] = st.waits_after_first;
        d["wait_seconds"] = st.wait_seconds;
        d["first_wait_seconds"] = st.first_wait_seconds;
        return d;
      });

  py::class_<AliasSampler>(m, "AliasSampler", R"doc(Alias-table sampler of p_j ∝ supports_j ** alpha.

AliasSampler(supports float64 (N,), alpha, seed, n_threads=0): draws are a function of
(seed, draw counter) only, so they do not depend on n_threads (0: all hardware threads).)doc")
      .def(py::init([](const py::object& supports, double alpha, uint64_t seed, int n_threads) {
             auto sup = checked_array<double>(supports, "item supports", false);
             const double* p = sup.data();
             const int64_t n = sup.shape(0);
             py::gil_scoped_release nogil;
             return new AliasSampler(p, n, alpha, seed, n_threads);
           }),
           py::arg("supports"), py::arg("alpha"), py::arg("seed") = 42, py::arg("n_threads") = 0)
      .def(
          "draw",
          [](AliasSampler& s, const py::object& out) {
            // Any C-contiguous int64/int32 array (e.g. the (rows, n_sample) store) is filled whole.
            if (py::isinstance<py::array_t<int32_t>>(out)) {
              auto a = checked_array<int32_t>(out, "sample buffer", true, true);
              if (s.n_items() > std::numeric_limits<int32_t>::max())
                throw std::invalid_argument("an int32 sample buffer cannot hold item ids >= 2^31");
              int32_t* p = a.mutable_data();
              const int64_t n = a.size();
              py::gil_scoped_release nogil;
              s.draw(p, n);
            } else {
              auto a = checked_array<int64_t>(out, "sample buffer", true, true);
              int64_t* p = a.mutable_data();
              const int64_t n = a.size();
              py::gil_scoped_release nogil;
              s.draw(p, n);
            }
          },
          py::arg("out"), "Fills out (int64 or int32, any shape, C-contiguous) with the next out.size draws.")
      .def(
          "sample",
          [](AliasSampler& s, int64_t n) {
            if (n < 0) throw std::invalid_argument("n_sample must be >= 0 (got " + std::to_string(n) + ")");
            py::array_t<int64_t> out(n);
            int64_t* p = out.mutable_data();
            {
              py::gil_scoped_release nogil;
              s.draw(p, n);
            }
            return out;
          },
          py::arg("n"), "The next n draws as a new int64 array (n,).")
      .def("probabilities", &AliasSampler::probabilities, "float64 (N,): the distribution the table draws from.")
      .def_readwrite("position", &AliasSampler::position, "draws made so far (the next draw's counter)")
      .def_property_readonly("n_items", &AliasSampler::n_items)
      .def_property_readonly("n_threads", &AliasSampler::n_threads)
      .def_property_readonly("seed", &AliasSampler::seed);
}
