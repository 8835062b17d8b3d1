// Stands in for the optional supports-color that `debug` tries to require: inside the
// binary a require() of anything not bundled only produces a warning.
module.exports = false;
