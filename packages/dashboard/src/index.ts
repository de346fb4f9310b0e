export function dashboardHtml(): string { return '<!doctype html><title>buildfleet</title>'; }
