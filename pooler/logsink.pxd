# The connection lines' path in C (logsink.info): a line is put together and queued for its batch's write
# with C calls and C field reads, two lines per connection.
cimport cython


cdef class Clock:
    cdef public object converter
    cdef public long second
    cdef public str date
    cdef public dict middles

    cpdef str stamp(self, double created, double msecs)
    cpdef turn(self, double created)
    @cython.locals(middle=str)
    cpdef str info_line(self, double created, int msecs, str name, str message)


cdef class Batch:
    cdef public list lines
    cdef public object scheduled_on
    cdef public object handler
    cdef public int fd

    @cython.locals(scheduled=object)
    cpdef add(self, str line)
    @cython.locals(lines=list)
    cpdef write(self)


cdef list _routes

@cython.locals(written=Py_ssize_t)
cpdef _write_all(int fd, bytes data)

cpdef bint info_enabled(logger)

@cython.locals(created=double, msecs=int, clock=Clock, batch=Batch)
cpdef info(logger, str text)
