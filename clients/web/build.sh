#!/bin/sh
# Builds the dashboard into clients/web/dist/: index.html, style.css and one
# app.js bundle with MQTT.js inside, so Mosquitto's http_dir can serve it as
# plain files with nothing fetched from elsewhere at run time; and
# tally-elements.js, the embeddable elements (elements/) as one classic
# script that any page may load from any node.
set -eu

cd "$(dirname "$0")"

if [ ! -d node_modules ]; then
	npm ci --no-audit --no-fund
fi

rm -rf dist
mkdir -p dist
cp src/index.html src/style.css dist/
node_modules/.bin/esbuild src/app.js \
	--bundle --minify --format=iife --platform=browser --target=es2020 \
	--legal-comments=linked --log-level=warning \
	--outfile=dist/app.js
node_modules/.bin/esbuild elements/src/index.js \
	--bundle --minify --format=iife --global-name=TallyElements --platform=browser --target=es2020 \
	--log-level=warning \
	--outfile=dist/tally-elements.js
