// sluice's version, compiled in so the standalone binary knows it too (a test keeps it
// equal to package.json's).
export const VERSION = "0.1.0";
