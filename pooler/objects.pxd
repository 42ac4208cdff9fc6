cimport cython
from pooler.client cimport Client
from pooler.server cimport Server
from pooler.app cimport Pooler


cdef class Limits:
    cdef public object name
    cdef public Py_ssize_t max_connections
    cdef public Py_ssize_t connections
    cdef public bint paused
    cdef public bint disabled
    cpdef bint full(self)

cdef class Stats:
    cdef public long long xact_count
    cdef public long long query_count
    cdef public long long bytes_received
    cdef public long long bytes_sent
    cdef public double wait_time
    cdef public double xact_time
    cdef public double query_time
    cdef public long long assignments
    cdef public long long client_logins
    cdef public long long login_failures
    cdef public long long parse_count
    cdef public long long bind_count
    cdef public long long server_parse_count
    cdef public list wait_buckets

@cython.final
cdef class Pool:
    cdef dict __dict__
    cdef public Pooler app
    cdef public object name
    cdef public object db
    cdef public object user
    cdef public object server_user
    cdef public object server_password
    cdef public Limits db_limits
    cdef public Limits user_limits
    cdef public list idle
    cdef public set servers
    cdef public object waiting
    cdef public Py_ssize_t client_count
    cdef public Py_ssize_t connecting
    cdef public object welcome
    cdef public object greetings
    cdef public object scram_keys
    cdef public object queried_secret
    cdef public double last_connect_failure
    cdef public object login_error
    cdef public double empty_since
    cdef public Stats stats
    cdef public object mode
    cdef public object size
    cdef public object reserve_size
    cdef public object min_size
    cdef public double server_lifetime
    cdef public object query_wait_timeout
    cdef public object max_servers
    cdef public object check_query
    cdef public object check_delay
    cdef public bint transactional
    cdef public bint tracks_statements
    cdef public bint statement
    cdef public bint pqexec_disallowed
    cdef public bint round_robin
    cdef public Py_ssize_t max_length

    cpdef Server next_idle(self)
    @cython.locals(server=Server)
    cpdef acquire(self, Client client)
    cpdef release(self, Server server, double now=*)
    @cython.locals(server=Server)
    cpdef serve_waiting(self)
    cpdef bint paused(self)
    cpdef bint over_size(self)
