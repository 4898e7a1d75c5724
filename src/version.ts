// The release, as package.json says (a unit test keeps the two equal; the package build checks it too).
export const VERSION = "0.1.0";
