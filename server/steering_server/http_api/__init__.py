"""The HTTP edge: OpenAI-compatible routes (`/v1/completions`, `/v1/chat/completions`,
`/v1/models`) with steering in the body, the steering JSON routes and `/health`, on FastAPI +
uvicorn. Like `grpc_api`, a thin edge over the front end: it converts bodies to domain requests
and answers back; the core validates. Only this package imports fastapi, starlette or uvicorn.
"""
