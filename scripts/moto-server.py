"""moto's API server, answering one request at a time.

DynamoDB applies each request to an item atomically (an UpdateItem's ADD
never loses a concurrent one) and Kinesis hands out sequence numbers in
order; moto's threaded server runs requests side by side on unguarded
Python state, so concurrent tests could see a lost update. Taking one lock
around each request restores the atomicity the real services promise.
Arguments are moto_server's.
"""

import threading

from moto import server
from moto.moto_server.werkzeug_app import DomainDispatcherApplication

_one_at_a_time = threading.Lock()
_dispatch = DomainDispatcherApplication.__call__


def _serialised(self, environ, start_response):
    with _one_at_a_time:
        # moto builds the whole answer in the call; materialise it under
        # the lock so nothing of the request runs outside it.
        return list(_dispatch(self, environ, start_response))


DomainDispatcherApplication.__call__ = _serialised

if __name__ == "__main__":
    server.main()
