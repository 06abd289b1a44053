# One image with the three services; compose.yaml picks the binary per service.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p api -p dispatcher -p workers

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends nodejs python3 bubblewrap ca-certificates curl \
      rustc libstd-rust-dev-wasm32 lld-14 librust-serde-json-dev \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --home /nonexistent --shell /usr/sbin/nologin lambda
COPY --from=build /src/target/release/api /src/target/release/dispatcher /src/target/release/workers /usr/local/bin/
COPY functions /usr/share/lambda-microservice/functions
ENV FUNCTIONS_DIR=/usr/share/lambda-microservice/functions
USER lambda
