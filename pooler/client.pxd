cimport cython
from pooler.session cimport param_key
from pooler.server cimport Server
from pooler.objects cimport Pool
from pooler.logsink cimport info, info_enabled
from pooler.app cimport Pooler

cdef bytearray EXTENDED, FRONTEND_TYPES

@cython.locals(address=cython.uint, part=cython.uint, char=cython.Py_UCS4)
cpdef unsigned int _ip4(str host)

cdef class Client:
    cdef public Pooler app
    cdef public object transport
    cdef public int state
    cdef public Pool pool
    cdef public Server server
    cdef public object user
    cdef public object params
    cdef public object options
    cdef public object replication
    cdef public object param_key
    cdef public object login
    cdef public object pending
    cdef public Py_ssize_t pending_bytes
    cdef public Py_ssize_t pending_syncs
    cdef public bint requested
    cdef public Py_ssize_t skip
    cdef public bytes partial
    cdef public double wait_started
    cdef public double connected_at
    cdef public double idle_since
    cdef public bint active
    cdef public int paused_by
    cdef public bint write_blocked
    cdef public bint unsynced
    cdef public object tracker
    cdef public object cancel_key
    cdef public bint counted
    cdef public long long id           # a C integer: an idle client keeps no int object for it
    cdef public unsigned int peer_ip4
    cdef public unsigned short peer_port

    @cython.locals(pos=Py_ssize_t, end=Py_ssize_t, syncs=Py_ssize_t, terminate=Py_ssize_t, begun=Py_ssize_t,
                   sent=Py_ssize_t, kind=int,
                   length=Py_ssize_t, scan=bytes, partial=bytes, unsynced=bint, track=bint, pool=Pool,
                   max_length=Py_ssize_t)
    cpdef received(self, data)
    @cython.locals(server=Server)
    cpdef _forward(self, data, Py_ssize_t syncs)
    cpdef bint at_boundary(self)
    @cython.locals(server=object, pool=Pool)
    cpdef _gone(self, reason=*)
    @cython.locals(pending=object)
    cpdef attach(self, Server server, double now=*)

    # The login path: C calls between its steps instead of a method lookup and a Python-level call each (a
    # connection per transaction runs all of them).
    cpdef _login_data(self, data)
    @cython.locals(length=Py_ssize_t, code=Py_ssize_t, buf=bytes)
    cpdef bint _startup_packet(self) except -1
    cpdef _start(self, dict params)
    cpdef _check_secret(self, secret, bint queried=*)
    cpdef bint _start_params(self, dict params) except -1
    cpdef bint _password_message(self) except -1
    @cython.locals(pool=Pool)
    cpdef _authenticated(self, scram_keys=*)
    cpdef finish_login(self, welcome, bytes greeting=*)
    @cython.locals(address=size_t, ip=cython.uint)
    cpdef str describe(self)
    cpdef log_login(self)
    @cython.locals(age=long)
    cpdef log_closing(self, str reason)
    @cython.locals(ip=cython.uint)
    cpdef str peer(self)
    cpdef _ask_peer(self)
    cpdef str tls_info(self)
