-- Reserved: another branch's migration takes this number (the merge replaces this file).
SELECT 1;
