// Lint for every package. The module-boundary rule is what keeps the architecture honest:
// agent and controller never import each other; both only import api and common.
import nx from '@nx/eslint-plugin';
import tseslint from 'typescript-eslint';

const depConstraints = [
  { sourceTag: 'scope:shared', onlyDependOnLibsWithTags: ['scope:shared'] },
  { sourceTag: 'scope:agent', onlyDependOnLibsWithTags: ['scope:shared'] },
  { sourceTag: 'scope:controller', onlyDependOnLibsWithTags: ['scope:shared'] },
  { sourceTag: 'scope:cli', onlyDependOnLibsWithTags: ['scope:shared'] },
  { sourceTag: 'scope:testkit', onlyDependOnLibsWithTags: ['scope:shared'] },
  { sourceTag: 'scope:tools', onlyDependOnLibsWithTags: ['scope:shared', 'scope:testkit', 'scope:agent', 'scope:controller'] },
];

export default [
  { ignores: ['**/dist/**', '**/node_modules/**', 'packages/api/src/gen/**', '**/*.js', '**/*.mjs', '**/*.cjs'] },
  ...tseslint.configs.recommended,
  {
    files: ['**/*.ts'],
    plugins: { '@nx': nx },
    rules: {
      '@nx/enforce-module-boundaries': [
        'error',
        {
          enforceBuildableLibDependency: true,
          allow: [],
          depConstraints,
        },
      ],
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_' }],
      'no-restricted-properties': ['error', { object: 'process', property: 'env', message: 'Read configuration once, in config.ts (zod), and pass it down.' }],
    },
  },
  {
    // The config loaders and entry points are the only places that may read the environment.
    files: ['**/config.ts', '**/main.ts', '**/*.test.ts', 'packages/testkit/**/*.ts', 'test/**/*.ts', 'tools/**/*.ts'],
    rules: { 'no-restricted-properties': 'off' },
  },
  {
    // Tests may use the shared test kit; production code may not.
    files: ['**/*.test.ts'],
    rules: {
      '@nx/enforce-module-boundaries': ['error', { enforceBuildableLibDependency: true, allow: ['@oarcloud/testkit'], depConstraints }],
    },
  },
];
