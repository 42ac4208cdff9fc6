# param_key in C: a login and a hand-off each compute one (client.pxd and server.pxd cimport it).
cimport cython

cdef dict _param_keys

@cython.locals(key=tuple)
cpdef tuple param_key(dict tracked, dict params, options=*)
