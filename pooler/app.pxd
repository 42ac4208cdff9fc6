# The pooler process's state as C fields: a login and a logout read a score of them (a connection per transaction
# runs both every time), and a hand-off of a server several, each a struct load instead of a dictionary lookup by
# name; and the methods they call are C calls. client.pxd, server.pxd and objects.pxd cimport this, so app is built
# with the hot modules (compiled.py).
from pooler.login cimport LoginRules
from pooler.client cimport Client

cdef class Pooler:
    cdef object __weakref__             # stats.window keys on it
    cdef dict __dict__                  # what modules may hang on it besides these
    cdef public object config
    cdef public object worker
    cdef public object peer_id
    cdef public object peer_listener
    cdef public dict forwards
    cdef public object loop
    cdef public object now
    cdef public double arrived
    cdef public dict userlist
    cdef public dict pools
    cdef public dict db_limits
    cdef public dict user_limits
    cdef public dict db_clients
    cdef public dict user_clients
    cdef public dict cancel_keys
    cdef public list random_keys
    cdef public object clients
    cdef public dict host_choices
    cdef public object resolver
    cdef public object statements
    cdef public dict tracked
    cdef public list listeners
    cdef public object unix_listener
    cdef public set tasks
    cdef public double started_at
    cdef public bint paused
    cdef public bint suspended
    cdef public bint draining
    cdef public bint shutting_down
    cdef public str shutdown_mode
    cdef public object stopped
    cdef public bint log_connections
    cdef public bint log_disconnections
    cdef public LoginRules rules
    cdef public object tls
    cdef public object auth_query
    cdef public object hba

    cpdef double arrival(self)
    cpdef client_connected(self, Client client)
    cpdef client_disconnected(self, Client client)
    cpdef admit(self, Client client, db, str dbname)
    cpdef register_cancel_key(self, Client client)
    cpdef get_pool(self, str dbname, str user, db=*)
