# chatsvc in a container. Without DATABASE_URL it runs its embedded Postgres in
# /data (mount a volume there); with DATABASE_URL it uses your Postgres.
FROM python:3.11-slim

WORKDIR /app
COPY setup.cfg pyproject.toml constraints.txt README.md ./
COPY chatsvc ./chatsvc
COPY sql ./sql
RUN rm -f chatsvc/sql && cp -r sql chatsvc/sql \
    && pip install --no-cache-dir -c constraints.txt . \
    && useradd --create-home chatsvc && mkdir /data && chown chatsvc /data

USER chatsvc
ENV CHATSVC_DATA_DIR=/data
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s CMD python -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=2)" || exit 1
CMD ["chatsvc", "serve", "--host", "0.0.0.0", "--port", "8000"]
