// Only in the Python extension (setup.py); the CMake library has no Python.
#include <Python.h>

extern "C" {
// Lets `import dare_kernels._C` load this library, and so run its op
// registrations, like a Python module, without pybind11.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

