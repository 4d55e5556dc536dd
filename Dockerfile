FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY step_protocol ./step_protocol
RUN pip install --no-cache-dir .
COPY config.example.yaml /etc/durable-gateway/config.yaml
VOLUME /data
EXPOSE 8080 8081 8082
ENTRYPOINT ["durable-gateway"]
CMD ["--config", "/etc/durable-gateway/config.yaml"]
