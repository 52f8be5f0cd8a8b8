"""The HTTP API: Mailpit's v1 and MailHog's v2 routes (so their clients and the test suites
written for them work unchanged) and mailsink's own under /api/mailsink/, one more face on the
sink service (mailsink.sink.Sink), served by aiohttp on the sink's event loop.

    web_service.py   HttpService: the listener, auth, errors as JSON, the app's routes
    routing.py       ApiRoutes: each route with what OpenAPI says of it
    request_params.py  reading parameters, each bad one a 400 naming it (ApiError)
    mailpit_api.py   Mailpit v1: messages, search, a message, its parts and views, tags, info
    mailpit_send.py, mailpit_chaos.py   Mailpit's /api/v1/send and /api/v1/chaos
    mailhog_api.py   MailHog v2 (and the v1 routes its clients call)
    native_api.py, native_faults.py   mailsink's own: messages, sessions, faults
    live_api.py      events: Mailpit's WebSocket, mailsink's SSE, the server-side wait
    openapi.py       the OpenAPI 3 document, made from the route tables

Nothing here is imported unless HTTP is served: `mailsink list` does not pay for aiohttp.
"""
