cimport cython
from pooler.session cimport param_key
from pooler.client cimport Client
from pooler.objects cimport Pool, Stats
from pooler.app cimport Pooler

cdef bytearray _READ

@cython.locals(high=Py_ssize_t)
cdef inline Py_ssize_t _length(const unsigned char *data, Py_ssize_t pos) noexcept

@cython.final
cdef class Server:
    cdef public Pool pool
    cdef public Pooler app
    cdef public object transport
    cdef public Client client
    cdef public object dedicated
    cdef public bint ready
    cdef public bint closed
    cdef public bint close_needed
    cdef public object params
    cdef public object options
    cdef public object param_key
    cdef public object backend_pid
    cdef public object backend_key
    cdef public Py_ssize_t expected
    cdef public int status
    cdef public Py_ssize_t z_count
    cdef public Py_ssize_t z_seen
    cdef public double busy_since
    cdef public Py_ssize_t skip
    cdef public bytes partial
    cdef public Py_ssize_t forwarded_partial
    cdef public object cache
    cdef public object internal
    cdef public object internal_error
    cdef public object buffer
    cdef public object login
    cdef public double connected_at
    cdef public double idle_since
    cdef public double last_used
    cdef public bint active
    cdef public double query_started
    cdef public double xact_started
    cdef public bint reading_paused
    cdef public object address
    cdef public bint tls_requested
    cdef public int cancels
    cdef public bint being_canceled
    cdef public object login_timer
    cdef public object id
    cdef public object target
    cdef object __weakref__

    @cython.locals(client=Client, pos=Py_ssize_t, end=Py_ssize_t, last=Py_ssize_t, stop=Py_ssize_t, kind=int,
                   scan=bytes, partial=bytes, out=bytes, released=bint, expected=Py_ssize_t, sent=Py_ssize_t,
                   now=double, stats=Stats, status=int, pool=Pool)
    cpdef data_received(self, data)
    @cython.locals(pool=Pool, stats=Stats, waited=double, stale=bint)
    cpdef assign(self, Client client, double now=*)
    @cython.locals(client=Client)
    cpdef detach(self, double now=*)
    cpdef start_query(self, double now)
    cpdef park(self)
