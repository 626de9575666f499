// Preloaded into a `vmabackup serve` child (node --import) to stand for a
// resolver that maps names elsewhere, without touching /etc/hosts:
// VMABACKUP_TEST_HOSTS='{"localhost":["0.0.0.0"]}' makes every dns.lookup
// of those names answer those addresses (grpc-js and our code both use it).
import dns from "node:dns";
import { syncBuiltinESMExports } from "node:module";
import { isIP } from "node:net";

const hosts = JSON.parse(process.env.VMABACKUP_TEST_HOSTS ?? "{}");

function entries(host) {
  const addresses = hosts[String(host).toLowerCase()];
  return addresses?.map((address) => ({ address, family: isIP(address) }));
}

const promiseLookup = dns.promises.lookup;
dns.promises.lookup = async (host, options) => {
  const found = entries(host);
  if (found === undefined) return promiseLookup(host, options);
  const all = typeof options === "object" && options !== null && options.all === true;
  return all ? found : found[0];
};

const callbackLookup = dns.lookup;
dns.lookup = (host, options, callback) => {
  const done = typeof options === "function" ? options : callback;
  const found = entries(host);
  if (found === undefined) return callbackLookup(host, options, callback);
  const all = typeof options === "object" && options !== null && options.all === true;
  process.nextTick(() => (all ? done(null, found) : done(null, found[0].address, found[0].family)));
  return {};
};

syncBuiltinESMExports();
