# The settings a login reads, as C fields of LoginRules (app.pxd types Pooler.rules with it).

cdef class LoginRules:
    cdef public str auth_type
    cdef public bint has_auth_file
    cdef public str remote_access
    cdef public tuple console_users
    cdef public object add_host
    cdef public Py_ssize_t max_client_conn
    cdef public object ignored
    cdef public Py_ssize_t max_db_client_connections
    cdef public Py_ssize_t max_user_client_connections
    cdef public bytes notice
    cdef public object scram_iterations
    cdef public Py_ssize_t socket_buffer
    cdef public bint reset_always
