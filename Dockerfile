# One image for every store: SQLite built in, PostgreSQL through the `postgres` extra
# (asyncpg). Every dependency ships a manylinux wheel, so no compiler is installed.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY step_protocol ./step_protocol
RUN pip install --no-cache-dir '.[postgres]' && rm -rf build ./*.egg-info
COPY config.example.yaml /etc/durable-gateway/config.yaml
VOLUME /data
EXPOSE 8080 8081 8082
ENTRYPOINT ["durable-gateway"]
CMD ["--config", "/etc/durable-gateway/config.yaml"]
