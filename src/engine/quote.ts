// Quoting of client-supplied strings inside error messages; it lives with
// the sources (the lowest layer that quotes) and the engine uses the same.
export { quote } from "../sources/quote.js";
