# One image for every store: SQLite built in, PostgreSQL through the `postgres` extra
# (asyncpg); tracing needs nothing more. Every dependency ships a manylinux wheel, so no
# compiler is installed.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY step_protocol ./step_protocol
RUN pip install --no-cache-dir '.[postgres]' && rm -rf build ./*.egg-info
VOLUME /data
EXPOSE 8080 8081 8082
ENTRYPOINT ["durable-gateway"]
# As shipped, the image shows the demo: `docker run --rm -p 8080:8080 -p 8082:8082 IMAGE`.
# In production, mount a configuration and run it:
#   docker run -v "$PWD/gateway.yaml:/etc/durable-gateway/gateway.yaml:ro" IMAGE \
#     --config /etc/durable-gateway/gateway.yaml
CMD ["demo", "--host", "0.0.0.0"]
