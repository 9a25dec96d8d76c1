// The version, kept in one place so `substrate --version` does not have to read package.json.
export const VERSION = '0.1.0'
